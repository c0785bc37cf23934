"""The KServe v2 REST bodies as pydantic models: they validate requests and document the API
in the OpenAPI page (``/docs``)."""

from typing import Any

from pydantic import BaseModel, Field, StrictInt


class ErrorBody(BaseModel):
    error: str = Field(description="What is wrong, and where there is one, what to do about it.")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(description="Protocol extensions this server implements.")


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    name: str | None = None
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(description="-1 marks a dimension of any size.", examples=[[-1, 100]])


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(
        default_factory=list, description="weightdb keeps one version per name: always empty."
    )
    platform: str = "weightdb"
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    batched_across_requests: bool = Field(
        description="weightdb extension: true when concurrent requests are stacked into one "
        "batch, which only a graph whose rows provably stay apart allows; false when each "
        "request runs alone."
    )
    batching_reason: str = Field(description="Why (weightdb extension).")


class ModelEntry(BaseModel):
    name: str
    format: str
    tensors: int
    bytes: int = Field(description="Logical bytes of the model's weights (before sharing).")
    servable: bool = Field(description="False for models stored without a graph.")


class ModelList(BaseModel):
    models: list[ModelEntry]


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferInput(BaseModel):
    name: str
    shape: list[StrictInt] = Field(description='JSON integers; strings such as "8" are refused.')
    datatype: str = Field(examples=["FP32"])
    data: list[Any] = Field(description="Values in row-major order, flat or nested.")
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = Field(
        default=None, description="Outputs to return; all when omitted."
    )
    parameters: dict[str, Any] | None = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] = Field(
        description="Values in row-major order, flat. JSON has no NaN or infinity: such float "
        'values are sent as the strings "NaN", "Infinity" and "-Infinity" (as in the protobuf '
        "JSON mapping of the protocol's gRPC form)."
    )


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[InferOutput]
