"""Drop-in replacement for OpenAI's ``guided_diffusion`` package (networks, factories, diffusion).

Code written against ``guided_diffusion.script_util`` / ``gaussian_diffusion`` can switch its imports to
this module. Everything here is a thin adapter over adm's own API (``adm.nn``, ``adm.diffusion``,
``adm.sampling``).
"""

from adm.compat.diffusion import *  # noqa: F401,F403
from adm.compat.flags import *  # noqa: F401,F403
from adm.compat.models import *  # noqa: F401,F403
