"""The vLLM engine every role runs: its command line (built in one place), start, health, restart, stop;
and the process supervisor (``Child``) every process we start goes through."""

from engine.process import Child, stop_all
from engine.vllm import CPU_BUILD, Engine, EngineSpec

__all__ = ["CPU_BUILD", "Child", "Engine", "EngineSpec", "stop_all"]
