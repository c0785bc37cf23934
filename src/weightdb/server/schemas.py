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
    parameters: dict[str, Any] | None = Field(
        default=None,
        description='`{"binary_data": true}` returns this output as binary data after the JSON '
        "header.",
    )


class InferInput(BaseModel):
    name: str
    shape: list[StrictInt] = Field(description='JSON integers; strings such as "8" are refused.')
    datatype: str = Field(examples=["FP32"])
    data: list[Any] | None = Field(
        default=None,
        description="Values in row-major order, flat or nested; omitted when the tensor comes "
        "as binary data (`parameters.binary_data_size` bytes after the JSON header).",
    )
    parameters: dict[str, Any] | None = Field(
        default=None, description='Binary data extension: `{"binary_data_size": bytes}`.'
    )


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = Field(
        default=None, description="Outputs to return; all when omitted."
    )
    parameters: dict[str, Any] | None = Field(
        default=None,
        description='`{"binary_data_output": true}` returns every output as binary data, '
        'unless an output says `"binary_data": false`.',
    )


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = Field(
        default=None,
        description="Values in row-major order, flat. JSON has no NaN or infinity: such float "
        'values are sent as the strings "NaN", "Infinity" and "-Infinity" (as in the protobuf '
        "JSON mapping of the protocol's gRPC form). Omitted for an output sent as binary data.",
    )
    parameters: dict[str, Any] | None = Field(
        default=None, description='For binary data: `{"binary_data_size": bytes}`.'
    )


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[InferOutput]


class Duration(BaseModel):
    count: int = Field(description="How many times the stage ran.")
    ns: int = Field(description="Their total duration in nanoseconds.")


class InferenceStats(BaseModel):
    success: Duration = Field(description="Requests answered 200, arrival to answer.")
    fail: Duration = Field(description="Requests answered with an error, arrival to answer.")
    queue: Duration = Field(description="Arrival to the start of the request's batch.")
    compute_input: Duration = Field(description="Checking and converting the inputs.")
    compute_infer: Duration = Field(description="The run of the batch the request was in.")
    compute_output: Duration = Field(description="Encoding the answer.")
    cache_hit: Duration = Field(description="Always zero: weightdb caches pages, not answers.")
    cache_miss: Duration = Field(description="Always zero: weightdb caches pages, not answers.")


class BatchStats(BaseModel):
    batch_size: int = Field(description="Rows of one run of the engine.")
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


class ModelStats(BaseModel):
    name: str
    last_inference: int = Field(description="Milliseconds since the epoch; 0 before any.")
    inference_count: int = Field(description="Rows inferred successfully.")
    execution_count: int = Field(description="Runs of the engine (a batch is one run).")
    inference_stats: InferenceStats
    batch_stats: list[BatchStats]


class StatisticsResponse(BaseModel):
    model_stats: list[ModelStats]


class RepositoryIndexRequest(BaseModel):
    ready: bool = Field(default=False, description="Only the models that can predict.")


class RepositoryEntry(BaseModel):
    name: str
    state: str = Field(examples=["READY", "UNAVAILABLE"])
    reason: str = Field(description="Why a model is not READY; empty when it is.")
