"""Stage 1: convert the official release into the Parquet and WebDataset repos.

``release`` reads the CSV and the images in place, ``sharding`` plans the shards (pure),
``writers`` writes them, ``journal`` keeps the work folder that makes a run resumable, ``card`` and
``stats`` write the dataset cards, and ``converter`` runs it all.
"""

from .converter import ConvertOptions, ConvertResult, convert, finalize, plan_conversion, task_from_environment
from .journal import WORK_DIR

__all__ = ["ConvertOptions", "ConvertResult", "convert", "finalize", "plan_conversion", "task_from_environment",
           "WORK_DIR"]
