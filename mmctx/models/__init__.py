from .backbones import *  # noqa: F401,F403
from .blocks import *  # noqa: F401,F403
