"""The vLLM engine every role runs: its command line (built in one place), start, health, restart, stop."""

from engine.vllm import CPU_BUILD, Engine, EngineSpec

__all__ = ["CPU_BUILD", "Engine", "EngineSpec"]
