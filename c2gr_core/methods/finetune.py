"""FineTune: the lower bound, the prompted segmentor fine-tuned on each incoming task alone."""
from . import register
from .base import SegmentorMethod


@register("finetune")
class FineTune(SegmentorMethod):
    pass
