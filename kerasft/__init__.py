"""kerasft: fine-tune a pretrained Keras 3 model on a new task in one call."""
from kerasft import _onednn

_onednn.configure()
