"""OpenAI-compatible request models and error bodies, as miners and the gateway accept them.

Fields follow the OpenAI reference order; the engine (vLLM) accepts many more, so
unknown fields are allowed and passed through untouched. Only what slmnet itself
must rely on is typed and range-checked here: the model, the messages or prompt,
the sampling limits, streaming, and the token ids and logprobs verification needs.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class OpenAIModel(BaseModel):
    """Base of every wire model: extra fields are kept, so engine options pass through."""

    model_config = ConfigDict(extra="allow")


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[dict[str, Any]], None] = None
    name: Optional[str] = None


class StreamOptions(OpenAIModel):
    include_usage: Optional[bool] = None


class SamplingFields(OpenAIModel):
    """The fields chat and text completions share."""

    model: str = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=8)
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    # slmnet additions (vLLM names them the same)
    return_token_ids: Optional[bool] = Field(default=None, description="Return the prompt's and the completion's token ids; verification needs them")


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: Optional[bool] = None
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs: true")
        return self


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: Optional[bool] = None
    logprobs: Optional[int] = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _prompt_not_empty(self) -> "CompletionRequest":
        if self.prompt == "" or self.prompt == []:
            raise ValueError("prompt must not be empty")
        return self


REQUEST_MODELS: dict[str, type[SamplingFields]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad field, e.g. ``messages: Field required; temperature: ...``."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def error_body(message: str, type_: str, code: Union[str, int, None] = None, param: Optional[str] = None) -> dict[str, Any]:
    """The OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
