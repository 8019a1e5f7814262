"""The validator's reference engines, made one way for its rounds and its replays.

Per model of ``--reference ID=URL`` (attached) or ``--engine`` (started and supervised here):
the engine, the model's tokenizer (``--tokenizer ID=DIR``), and once the engine is ready one
``ReferenceEngine`` with the model list's end tokens and context, kept for the process's life
(its grammar book is built once, not every round).
"""

from __future__ import annotations

import aiohttp

from engine import Engine
from models.tokenizer import ModelTokenizer
from shell.role import StartupError
from validator.config import ValidatorConfig
from validator.verify import ReferenceEngine


class References:
    def __init__(self, config: ValidatorConfig):
        self.models = config.models
        self.engines = {spec.served_name: Engine(url=spec.url, spec=spec) for spec in config.engines}
        self.engines.update({model: Engine(url=url) for model, url in config.references})
        folders = dict(config.tokenizers)
        missing = sorted(set(self.engines) - set(folders))
        if missing:
            raise StartupError(f"no tokenizer for {', '.join(missing)}: give --tokenizer ID=DIR")
        self.tokenizers = {model: ModelTokenizer(folder) for model, folder in folders.items()}
        self._made: dict[str, ReferenceEngine] = {}

    def ready(self, session: aiohttp.ClientSession) -> dict[str, ReferenceEngine]:
        """Model → its reference, for every engine ready now."""
        for model, engine in self.engines.items():
            if engine.ready and model not in self._made:
                supported = self.models.get(model)
                self._made[model] = ReferenceEngine(
                    session,
                    engine.url,
                    model,
                    self.tokenizers[model],
                    end_token_ids=supported.end_token_ids if supported else (),
                    max_context=supported.max_context if supported else 1 << 30,
                )
        return {model: reference for model, reference in self._made.items() if self.engines[model].ready}

    def states(self) -> dict[str, str]:
        return {model: engine.state for model, engine in self.engines.items()}
