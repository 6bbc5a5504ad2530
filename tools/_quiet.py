"""Hide the known upstream deprecation warnings in mmctx's tools.

Imported first by every tool in ``tools/`` (stdlib only, so that it runs before
mmengine's import warns). ``--show-upstream-warnings`` (or the environment variable
``MMCTX_SHOW_UPSTREAM_WARNINGS=1``) shows them again. Only the messages listed here
are hidden, each by its exact start: any other warning still prints.
"""
import logging
import os
import sys
import warnings

FLAG = '--show-upstream-warnings'
FLAG_HELP = ('show the known upstream deprecation warnings that mmctx\'s tools hide '
             '(pkg_resources, build_loss, avg_non_ignore, FileClient, draw is False, ...)')

#: start of the message and category of each upstream ``warnings.warn`` hidden
UPSTREAM_WARNINGS = (
    ('pkg_resources is deprecated as an API', UserWarning),  # mmengine, mmcv imports
    ('``build_loss`` would be deprecated soon', UserWarning),  # mmseg heads
    ('Default ``avg_non_ignore`` is False', UserWarning),  # mmseg CrossEntropyLoss
    ('``build_pixel_sampler`` would be deprecated soon', UserWarning),  # mmseg heads
    ('The draw is False, it means that the hook for visualization', UserWarning),
    ('torch.utils.checkpoint: the use_reentrant parameter', UserWarning),  # mmseg, mmaction
    ('DeprecationWarning: pretrained is a deprecated', UserWarning),  # mmseg backbones
)
#: start of each message mmengine *logs* at WARNING level that is hidden
UPSTREAM_LOG_WARNINGS = (
    '"FileClient" will be deprecated in future',
    '"HardDiskBackend" is the alias of "LocalBackend"',
    'The prefix is not set in metric class',  # mmseg's IoUMetric, every validation
)


def showing() -> bool:
    return FLAG in sys.argv or os.environ.get('MMCTX_SHOW_UPSTREAM_WARNINGS') == '1'


def install() -> bool:
    """Add the warning filters unless asked to show them; returns whether it did."""
    if showing():
        return False
    for message, category in UPSTREAM_WARNINGS:
        warnings.filterwarnings('ignore', message='^' + _escape(message), category=category)
    return True


class UpstreamLogFilter(logging.Filter):
    """Drops the records listed in ``UPSTREAM_LOG_WARNINGS``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        text = record.getMessage()
        return not any(text.startswith(m) for m in UPSTREAM_LOG_WARNINGS)


def filter_logger(logger: logging.Logger) -> None:
    """Hide the listed mmengine log warnings on ``logger`` (e.g. ``runner.logger``)."""
    if not showing() and not any(isinstance(f, UpstreamLogFilter) for f in logger.filters):
        logger.addFilter(UpstreamLogFilter())


def add_flag(parser) -> None:
    parser.add_argument(FLAG, action='store_true', help=FLAG_HELP)


def _escape(text: str) -> str:
    import re
    return re.escape(text)


install()
