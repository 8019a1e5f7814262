"""OpenAI-compatible request models, as miners and the gateway accept them (error bodies: ``protocol.errors``).

Fields follow the OpenAI reference order; the engine (vLLM) accepts many more, so
unknown fields are allowed and passed through untouched. Only what slmnet itself
must rely on is typed and range-checked here: the model, the messages or prompt,
the sampling limits, streaming, and the token ids and logprobs verification needs.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protocol.structured import MAX_SCHEMA_BYTES


class OpenAIModel(BaseModel):
    """Base of every wire model: extra fields are kept, so engine options pass through."""

    model_config = ConfigDict(extra="allow")


MAX_SEED = 2**63 - 1  # engines keep the seed in 64 bits
StopString = Annotated[str, Field(min_length=1)]  # engines refuse an empty stop string


class ContentNotSupported(ValueError):
    """A message part slmnet's text models cannot take (an image, audio…); ``param`` names it."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class ContentPart(OpenAIModel):
    type: str = Field(max_length=64)
    text: Optional[str] = None


FunctionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class CalledFunction(OpenAIModel):
    name: FunctionName
    arguments: str = Field(max_length=MAX_SCHEMA_BYTES)


class ToolCall(OpenAIModel):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: CalledFunction


class FunctionSpec(OpenAIModel):
    name: FunctionName
    description: Optional[str] = Field(default=None, max_length=4096)
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class ToolSpec(OpenAIModel):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(OpenAIModel):
    name: FunctionName


class NamedToolChoice(OpenAIModel):
    type: Literal["function"]
    function: NamedFunction


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = Field(default=None, max_length=256)
    tool_calls: Optional[list[ToolCall]] = Field(default=None, max_length=16)
    tool_call_id: Optional[str] = Field(default=None, max_length=256)

    def plain(self, index: int) -> dict[str, Any]:
        """The message with its content as one string (text parts joined, null as empty):
        what a text model's chat template takes. ContentNotSupported for any other part."""
        content = self.content
        if isinstance(content, list):
            for number, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise ContentNotSupported(
                        f"messages.{index}.content.{number}: a '{part.type}' part; slmnet's models take text parts only",
                        f"messages.{index}.content.{number}.type",
                    )
            content = "".join(part.text or "" for part in content)
        message: dict[str, Any] = {"role": self.role, "content": content or ""}
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls:  # (``protocol.tools`` writes these as plain turns)
            message["tool_calls"] = [call.model_dump(mode="json") for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class JsonSchemaFormat(OpenAIModel):
    model_config = ConfigDict(extra="allow", serialize_by_alias=True, validate_by_name=False)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: Optional[str] = Field(default=None, max_length=4096)
    schema_: dict[str, Any] = Field(alias="schema")  # required: vLLM compiles no grammar from a json_schema without one
    strict: Optional[bool] = None


class ResponseFormat(OpenAIModel):
    """OpenAI's ``response_format``: plain text, any JSON object, or JSON that follows a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None

    @model_validator(mode="after")
    def _schema_with_json_schema(self) -> "ResponseFormat":
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given with type 'json_schema', and only then")
        if self.json_schema is not None and len(json.dumps(self.json_schema.schema_)) > MAX_SCHEMA_BYTES:
            raise ValueError(f"the schema is longer than {MAX_SCHEMA_BYTES} bytes of JSON")
        return self


class StreamOptions(OpenAIModel):
    include_usage: Optional[bool] = None


class SamplingFields(OpenAIModel):
    """The fields chat and text completions share."""

    model: str = Field(min_length=1, max_length=256)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    max_tokens: Optional[int] = Field(default=None, ge=1, le=1 << 20)
    n: int = Field(default=1, ge=1, le=8)
    presence_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    seed: Optional[int] = Field(default=None, ge=-MAX_SEED - 1, le=MAX_SEED)
    stop: Union[StopString, list[StopString], None] = Field(default=None, max_length=4)  # engines take 4 at most (vLLM, OpenAI)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    user: Optional[str] = Field(
        default=None, max_length=256, description="Accepted and dropped: never sent to a miner (miners are strangers), not recorded in the ledger"
    )
    # vLLM's sampling extensions, same names
    top_k: Optional[int] = Field(default=None, ge=-1, le=1 << 20, description="-1 or 0: no top-k")
    min_p: Optional[float] = Field(default=None, ge=0, le=1)
    repetition_penalty: Optional[float] = Field(default=None, gt=0, le=2)
    ignore_eos: Optional[bool] = Field(default=None, description="Generate max_tokens tokens whatever the model's end")
    # slmnet additions (vLLM names them the same)
    return_token_ids: Optional[bool] = Field(default=None, description="Return the prompt's and the completion's token ids; verification needs them")


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    logprobs: Optional[bool] = None
    max_completion_tokens: Optional[int] = Field(default=None, ge=1, le=1 << 20)
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    response_format: Optional[ResponseFormat] = None
    tools: Optional[list[ToolSpec]] = Field(default=None, max_length=64)
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: Optional[bool] = None

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs: true")
        return self

    @model_validator(mode="after")
    def _tools_answer_in_their_own_format(self) -> "ChatCompletionRequest":
        if self.tools and self.tool_choice != "none" and self.response_format is not None and self.response_format.type != "text":
            raise ValueError("response_format cannot be combined with tools: a tool call is its own format")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ValueError("tool_choice needs tools")
        if self.tools and len(json.dumps([t.model_dump(mode="json") for t in self.tools])) > MAX_SCHEMA_BYTES:
            raise ValueError(f"the tools are longer than {MAX_SCHEMA_BYTES} bytes of JSON")
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


def json_depth(value: Any) -> int:
    """How deeply ``value`` (parsed JSON) nests lists and objects, counted without recursion."""
    depth, level = 0, [(value, 1)]
    while level:
        item, d = level.pop()
        if isinstance(item, (dict, list)):
            depth = max(depth, d)
            level.extend((child, d + 1) for child in (item.values() if isinstance(item, dict) else item))
    return depth


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad field, e.g. ``messages: Field required; temperature: ...``."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
