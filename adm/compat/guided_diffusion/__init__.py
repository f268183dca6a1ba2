"""Drop-in replacement for OpenAI's ``guided_diffusion`` package, with the same module layout.

``from adm.compat.guided_diffusion.script_util import create_model_and_diffusion`` (and ``.unet``,
``.gaussian_diffusion``, ``.respace``, ``.nn``, ``.losses``, ``.resample``, ``.fp16_util``, ``.dist_util``,
``.logger``, ``.image_datasets``, ``.train_util``) works as with OpenAI's package; an unmodified script runs
with ``python -m adm.compat.run script.py ...``. Every module is a thin adapter over adm's own API
(``adm.nn``, ``adm.diffusion``, ``adm.sampling``, ``adm.data``, ``adm.lit``); nothing needs MPI.

The package itself also re-exports the networks, factories and diffusion classes (the names of
``script_util``, ``unet`` and ``gaussian_diffusion``) for ``import adm.compat.guided_diffusion as gd``.
"""

from adm.compat.diffusion import *  # noqa: F401,F403
from adm.compat.flags import *  # noqa: F401,F403
from adm.compat.models import *  # noqa: F401,F403
