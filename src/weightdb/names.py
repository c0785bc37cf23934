"""Model names: what users may call a model.

Names appear in URLs (``/v2/models/{name}``), SQL calls (``predict('name', ...)``) and CLI
arguments, so they are restricted to characters that need no escaping anywhere. They never
become file paths: page files are named by number. Tensor names are free-form (they come from
model files) and are only ever stored as bound SQL parameters.
"""

import re

from weightdb.errors import InvalidNameError

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_model_name(name: object) -> str:
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        raise InvalidNameError(
            f"model name {name!r} is not allowed: use 1 to 128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name
