"""The run directory: the one place where its layout is spelled.

```
runs/NAME/
  config.json             the resolved config
  tokenizer.json          the tokenizer (its kind's JSON; every checkpoint holds it too)
  metrics.jsonl           one JSON object per line (metrics.py writes them)
  metrics-earlier.jsonl   what a run logged before it had to start again from step 0
  loss.png                the loss curves, drawn at the end
  checkpoints/            step-NNNNNNNN/ and best/ (checkpoint.py writes them)
```

Everything else asks a `RunDir` for these paths; nothing else writes their names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tinygpt.config import RunConfig
from tinygpt.errors import UserError
from tinygpt.tokenizers import Tokenizer, save_tokenizer


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def tokenizer(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def earlier_metrics(self) -> Path:
        return self.path / "metrics-earlier.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.path / "loss.png"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best(self) -> Path:
        """The checkpoint with the lowest val loss so far."""
        return self.checkpoints / "best"

    def exists(self) -> bool:
        """Whether this is a tinygpt run directory (it has its config)."""
        return self.config.is_file()

    def read_config(self) -> RunConfig:
        try:
            return RunConfig.from_dict(json.loads(self.config.read_text("utf-8")))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {self.config}: {exc}") from None

    def write_config(self, config: RunConfig) -> None:
        """config.json, replaced atomically so that a crash never leaves half of it."""
        tmp = self.path / ".config.json.tmp"
        tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.config)

    def write_tokenizer(self, tokenizer: Tokenizer) -> None:
        tmp = self.path / ".tokenizer.json.tmp"
        save_tokenizer(tokenizer, tmp)
        tmp.replace(self.tokenizer)

    def __str__(self) -> str:
        return str(self.path)


def is_run_dir(path: Path) -> bool:
    return RunDir(path).exists()
