"""tools/gpu_check.py: the GPU check's block code on the CPU, and its no-GPU exit."""
import os.path as osp
import subprocess
import sys

import pytest
import torch

from .conftest import ROOT

sys.path.insert(0, osp.join(ROOT, 'tools'))
import gpu_check  # noqa: E402


def test_block_table_on_cpu_matches_upstream(tmp_path, capsys):
    out = tmp_path / 'check.md'
    rc = gpu_check.main(['--device', 'cpu', '--size', '6', '10', '--channels', '16',
                         '--repeats', '1', '--out', str(out)])
    assert rc == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith('| ') and 'vs' in line
            and 'block (mmctx' not in line]
    # 3 pairs x 2 dtypes x 2 modes, each with the outputs' max abs difference
    assert len(rows) == 12
    for row in rows:
        cells = [c.strip() for c in row.strip('|').split('|')]
        diff = float(cells[-1])
        # same weights: fp32 agrees to rounding; bf16 autocast within bf16's precision
        assert diff < (1e-4 if cells[1] == 'fp32' else 0.1), row
        assert float(cells[5]) > 0  # a time ratio was measured
    assert 'CPU' in text.splitlines()[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the no-GPU exit')
def test_without_cuda_it_stops_with_a_clear_message():
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'gpu_check.py')],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert 'no CUDA device' in proc.stderr and '--device cpu' in proc.stderr


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit):
        gpu_check.main(['--device', 'cpu', '--repeats', '0'])
