"""Secrets stay in memory: training arguments pickle without their Hub token.

transformers saves the training arguments with `torch.save` as `training_args.bin`: in the output folder, in every
checkpoint, and before each push it makes during training. A `hub_token` set on them would therefore be uploaded with
the model and kept in the repo's history for good. `TokenFreePickle` leaves the token out of every pickle of the
arguments (it is needed only in memory, to publish); copies made in memory (`copy.copy`, `copy.deepcopy`) keep it.

>>> import copy
>>> class Args(TokenFreePickle):
...     hub_token = None
>>> args = Args()
>>> args.hub_token = "hf_secret"
>>> args.__getstate__()["hub_token"], copy.deepcopy(args).hub_token  # what pickle stores, and a copy
(None, 'hf_secret')
"""

import copy


HUB_TOKEN_HELP = (
    "Hub token with write access (default: the token of `hf auth login` or HF_TOKEN). It is used in memory only: "
    "never printed, logged, saved or published."
)


class TokenFreePickle:
    """Mixin for training-argument dataclasses: `hub_token` is never pickled (see the module docstring)."""

    def __getstate__(self):
        return {**self.__dict__, "hub_token": None} if "hub_token" in self.__dict__ else dict(self.__dict__)

    def __copy__(self):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo):
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new
