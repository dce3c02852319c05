"""The data layer: records -> tokenized samples (cached) -> packed micro-batches per optimizer step."""

from .config import DataConfig
from .packing import StepBatch, StepLoader, collate, iter_scoring_batches
from .records import LoadReport, load_records, load_records_with_report
from .tokenize import TokenizeReport, tokenize_records

__all__ = ["DataConfig", "LoadReport", "StepBatch", "StepLoader", "TokenizeReport", "collate", "iter_scoring_batches",
           "load_records", "load_records_with_report", "tokenize_records"]
