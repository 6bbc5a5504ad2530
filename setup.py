import os.path as osp

from setuptools import find_packages, setup


def read_version() -> str:
    scope: dict = {}
    with open(osp.join(osp.dirname(__file__), 'mmctx', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def read_requirements(path: str) -> list:
    with open(osp.join(osp.dirname(__file__), path)) as f:
        return [
            line.split('#')[0].strip() for line in f
            if line.split('#')[0].strip() and not line.startswith('-')
        ]


setup(
    name='mmctx',
    version=read_version(),
    description='Context-modeling blocks (NL, DNL, SNL, GC, SE, LESA, EMA, '
    'A2, GloRe) for mmsegmentation, mmdetection and mmaction2',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    python_requires='>=3.8',
    packages=find_packages(exclude=('configs', 'tools', 'tests')),
    include_package_data=True,
    install_requires=read_requirements('requirements/runtime.txt'),
    extras_require={
        'stack': read_requirements('requirements/stack.txt'),
        'tests': read_requirements('requirements/tests.txt'),
        'deploy': read_requirements('requirements/deploy.txt'),
    },
    license='Apache License 2.0',
    zip_safe=False,
)
