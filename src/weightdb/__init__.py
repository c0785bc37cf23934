"""weightdb: a relational database for deep learning models.

import weightdb
with weightdb.connect("models.wdb") as db:
    db.import_model("model.safetensors", name="classifier")
    db.export_model("classifier", "out.safetensors")
"""

from weightdb.database import Database, ModelInfo, connect
from weightdb.errors import WeightDBError
from weightdb.storage.settings import Settings

__version__ = "0.1.0"
__all__ = ["Database", "ModelInfo", "Settings", "WeightDBError", "connect"]
