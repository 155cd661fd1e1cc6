"""Everything that touches an adapter on disk or on a hub: the one owner of file names and keys.

`format` (the safetensors delta: metadata keys, fingerprint, save/load, header checks), `hub`
(save_pretrained / from_pretrained / push_to_hub and the local-path-or-hub-id rule) and
`model_card` (the README written beside an adapter). Files import core, never training or commands.
"""

from ..core.model import register_file_operations
from .format import load_adapter, save_adapter
from .hub import push_to_hub, save_pretrained

register_file_operations(
    save_adapter=save_adapter, load_adapter=load_adapter, save_pretrained=save_pretrained, push_to_hub=push_to_hub
)
