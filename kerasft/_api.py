"""Everything ``import kerasft`` gives, loaded in one place (see ``kerasft/__init__.py``)."""

from kerasft import _keras_compat  # noqa: E402

_keras_compat.check_keras_version()

from kerasft import pooling  # noqa: E402  (register their layers for load_model)

pooling.register_stand_in()
