"""Run by tests/test_distributed.py under torchrun: trains the runs described by a JSON list of
config override lists, one after the other, with the one Trainer (as ``difflab train`` does),
including the two-group objective of tests/test_objectives.py."""

import json
import sys

import test_objectives  # noqa: F401 -- registers the objective 'test_two_groups'
from difflab.train import Trainer, distributed, load_config


def main() -> None:
    try:
        for overrides in json.loads(sys.argv[1]):
            tr = Trainer(load_config(None, overrides), progress=False)
            tr.fit()
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
