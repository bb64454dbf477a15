"""A user's module that registers its net when imported: ``src/eval.py ... imports=[tests.registered_user_net]``."""

import segkit
from tests.helpers import UserNet

segkit.register_net(UserNet)
