"""Clear errors for bad callback input: the suite's single definition lives in ``analysis.errors``.

``CallbackConfigError`` is ``analysis.errors.ConfigError`` under the name the callbacks have always
raised, so ``except CallbackConfigError`` also catches the errors of the analysis math they wire in.
"""

from analysis.errors import ConfigError as CallbackConfigError
from analysis.errors import check_choice, did_you_mean

__all__ = ["CallbackConfigError", "check_choice", "did_you_mean"]
