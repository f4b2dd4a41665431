from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Modality(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODALITY_UNSPECIFIED: _ClassVar[Modality]
    MODALITY_TEXT: _ClassVar[Modality]
    MODALITY_IMAGE: _ClassVar[Modality]
    MODALITY_AUDIO: _ClassVar[Modality]
    MODALITY_VIDEO: _ClassVar[Modality]

class Track(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRACK_UNSPECIFIED: _ClassVar[Track]
    TRACK_VISUAL: _ClassVar[Track]
    TRACK_AUDIO: _ClassVar[Track]

class Fusion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_UNSPECIFIED: _ClassVar[Fusion]
    FUSION_RRF: _ClassVar[Fusion]
MODALITY_UNSPECIFIED: Modality
MODALITY_TEXT: Modality
MODALITY_IMAGE: Modality
MODALITY_AUDIO: Modality
MODALITY_VIDEO: Modality
TRACK_UNSPECIFIED: Track
TRACK_VISUAL: Track
TRACK_AUDIO: Track
FUSION_UNSPECIFIED: Fusion
FUSION_RRF: Fusion

class QueryInput(_message.Message):
    __slots__ = ("text", "image", "id", "audio", "video")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: bytes
    id: str
    audio: bytes
    video: bytes
    def __init__(self, text: _Optional[str] = ..., image: _Optional[bytes] = ..., id: _Optional[str] = ..., audio: _Optional[bytes] = ..., video: _Optional[bytes] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("key", "keyword", "integer", "boolean", "any_of", "range")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    BOOLEAN_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    key: str
    keyword: str
    integer: int
    boolean: bool
    any_of: KeywordList
    range: Range
    def __init__(self, key: _Optional[str] = ..., keyword: _Optional[str] = ..., integer: _Optional[int] = ..., boolean: _Optional[bool] = ..., any_of: _Optional[_Union[KeywordList, _Mapping]] = ..., range: _Optional[_Union[Range, _Mapping]] = ...) -> None: ...

class KeywordList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("gt", "gte", "lt", "lte")
    GT_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    gt: float
    gte: float
    lt: float
    lte: float
    def __init__(self, gt: _Optional[float] = ..., gte: _Optional[float] = ..., lt: _Optional[float] = ..., lte: _Optional[float] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("must", "must_not", "should")
    MUST_FIELD_NUMBER: _ClassVar[int]
    MUST_NOT_FIELD_NUMBER: _ClassVar[int]
    SHOULD_FIELD_NUMBER: _ClassVar[int]
    must: _containers.RepeatedCompositeFieldContainer[Condition]
    must_not: _containers.RepeatedCompositeFieldContainer[Condition]
    should: _containers.RepeatedCompositeFieldContainer[Condition]
    def __init__(self, must: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., must_not: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., should: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ...) -> None: ...

class WeightedInput(_message.Message):
    __slots__ = ("input", "weight")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    input: QueryInput
    weight: float
    def __init__(self, input: _Optional[_Union[QueryInput, _Mapping]] = ..., weight: _Optional[float] = ...) -> None: ...

class SearchStages(_message.Message):
    __slots__ = ("oversampling", "quantized", "exact_rescore", "frames_rescore", "mmr_lambda")
    OVERSAMPLING_FIELD_NUMBER: _ClassVar[int]
    QUANTIZED_FIELD_NUMBER: _ClassVar[int]
    EXACT_RESCORE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_RESCORE_FIELD_NUMBER: _ClassVar[int]
    MMR_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    oversampling: float
    quantized: bool
    exact_rescore: bool
    frames_rescore: bool
    mmr_lambda: float
    def __init__(self, oversampling: _Optional[float] = ..., quantized: _Optional[bool] = ..., exact_rescore: _Optional[bool] = ..., frames_rescore: _Optional[bool] = ..., mmr_lambda: _Optional[float] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("query", "top_k", "modalities", "filter", "score_threshold", "group_size", "positives", "negatives", "fusion", "stages", "calibrated_threshold")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    POSITIVES_FIELD_NUMBER: _ClassVar[int]
    NEGATIVES_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    query: QueryInput
    top_k: int
    modalities: _containers.RepeatedScalarFieldContainer[Modality]
    filter: Filter
    score_threshold: float
    group_size: int
    positives: _containers.RepeatedCompositeFieldContainer[WeightedInput]
    negatives: _containers.RepeatedCompositeFieldContainer[WeightedInput]
    fusion: Fusion
    stages: SearchStages
    calibrated_threshold: float
    def __init__(self, query: _Optional[_Union[QueryInput, _Mapping]] = ..., top_k: _Optional[int] = ..., modalities: _Optional[_Iterable[_Union[Modality, str]]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., score_threshold: _Optional[float] = ..., group_size: _Optional[int] = ..., positives: _Optional[_Iterable[_Union[WeightedInput, _Mapping]]] = ..., negatives: _Optional[_Iterable[_Union[WeightedInput, _Mapping]]] = ..., fusion: _Optional[_Union[Fusion, str]] = ..., stages: _Optional[_Union[SearchStages, _Mapping]] = ..., calibrated_threshold: _Optional[float] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("id", "score", "modality", "source", "media_id", "segment", "text", "metadata", "attributes", "t_start", "t_end", "track", "pooled", "calibrated_score")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    T_START_FIELD_NUMBER: _ClassVar[int]
    T_END_FIELD_NUMBER: _ClassVar[int]
    TRACK_FIELD_NUMBER: _ClassVar[int]
    POOLED_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_SCORE_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    modality: Modality
    source: str
    media_id: str
    segment: int
    text: str
    metadata: _struct_pb2.Struct
    attributes: _struct_pb2.Struct
    t_start: float
    t_end: float
    track: Track
    pooled: bool
    calibrated_score: float
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., modality: _Optional[_Union[Modality, str]] = ..., source: _Optional[str] = ..., media_id: _Optional[str] = ..., segment: _Optional[int] = ..., text: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., t_start: _Optional[float] = ..., t_end: _Optional[float] = ..., track: _Optional[_Union[Track, str]] = ..., pooled: _Optional[bool] = ..., calibrated_score: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "bundle_id", "query_modality", "stage_ms")
    class StageMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    HITS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_MODALITY_FIELD_NUMBER: _ClassVar[int]
    STAGE_MS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    bundle_id: str
    query_modality: Modality
    stage_ms: _containers.ScalarMap[str, float]
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., bundle_id: _Optional[str] = ..., query_modality: _Optional[_Union[Modality, str]] = ..., stage_ms: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("positive_ids", "negative_ids", "top_k", "modalities", "filter", "group_size")
    POSITIVE_IDS_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    positive_ids: _containers.RepeatedScalarFieldContainer[str]
    negative_ids: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    modalities: _containers.RepeatedScalarFieldContainer[Modality]
    filter: Filter
    group_size: int
    def __init__(self, positive_ids: _Optional[_Iterable[str]] = ..., negative_ids: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., modalities: _Optional[_Iterable[_Union[Modality, str]]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., group_size: _Optional[int] = ...) -> None: ...

class MineRequest(_message.Message):
    __slots__ = ("queries", "positive_ids", "k", "modalities", "filter", "group_key", "group", "max_fraction_of_positive", "near_duplicate")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    GROUP_KEY_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MAX_FRACTION_OF_POSITIVE_FIELD_NUMBER: _ClassVar[int]
    NEAR_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[QueryInput]
    positive_ids: _containers.RepeatedScalarFieldContainer[str]
    k: int
    modalities: _containers.RepeatedScalarFieldContainer[Modality]
    filter: Filter
    group_key: str
    group: str
    max_fraction_of_positive: float
    near_duplicate: float
    def __init__(self, queries: _Optional[_Iterable[_Union[QueryInput, _Mapping]]] = ..., positive_ids: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., modalities: _Optional[_Iterable[_Union[Modality, str]]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., group_key: _Optional[str] = ..., group: _Optional[str] = ..., max_fraction_of_positive: _Optional[float] = ..., near_duplicate: _Optional[float] = ...) -> None: ...

class MineResponse(_message.Message):
    __slots__ = ("negatives", "positive_score")
    NEGATIVES_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_SCORE_FIELD_NUMBER: _ClassVar[int]
    negatives: _containers.RepeatedCompositeFieldContainer[SearchHit]
    positive_score: float
    def __init__(self, negatives: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., positive_score: _Optional[float] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("inputs",)
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[QueryInput]
    def __init__(self, inputs: _Optional[_Iterable[_Union[QueryInput, _Mapping]]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("vector", "modality")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    vector: _containers.RepeatedScalarFieldContainer[float]
    modality: Modality
    def __init__(self, vector: _Optional[_Iterable[float]] = ..., modality: _Optional[_Union[Modality, str]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "bundle_id", "dim")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    bundle_id: str
    dim: int
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., bundle_id: _Optional[str] = ..., dim: _Optional[int] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "text", "image", "audio", "video", "source", "metadata", "attributes")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    image: bytes
    audio: bytes
    video: bytes
    source: str
    metadata: _struct_pb2.Struct
    attributes: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., image: _Optional[bytes] = ..., audio: _Optional[bytes] = ..., video: _Optional[bytes] = ..., source: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class ItemResult(_message.Message):
    __slots__ = ("index", "ids", "media_id", "unchanged", "error", "note")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    MEDIA_ID_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    index: int
    ids: _containers.RepeatedScalarFieldContainer[str]
    media_id: str
    unchanged: bool
    error: str
    note: str
    def __init__(self, index: _Optional[int] = ..., ids: _Optional[_Iterable[str]] = ..., media_id: _Optional[str] = ..., unchanged: _Optional[bool] = ..., error: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("results", "written", "failed")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ItemResult]
    written: int
    failed: int
    def __init__(self, results: _Optional[_Iterable[_Union[ItemResult, _Mapping]]] = ..., written: _Optional[int] = ..., failed: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("ids", "with_vectors")
    IDS_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    with_vectors: bool
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., with_vectors: _Optional[bool] = ...) -> None: ...

class StoredPoint(_message.Message):
    __slots__ = ("point", "vector")
    POINT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    point: SearchHit
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, point: _Optional[_Union[SearchHit, _Mapping]] = ..., vector: _Optional[_Iterable[float]] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[StoredPoint]
    def __init__(self, points: _Optional[_Iterable[_Union[StoredPoint, _Mapping]]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("points", "bundle_id", "bundle_name", "dim", "by_modality", "store", "max_top_k", "audio")
    class ByModalityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    POINTS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    BY_MODALITY_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    points: int
    bundle_id: str
    bundle_name: str
    dim: int
    by_modality: _containers.ScalarMap[str, int]
    store: str
    max_top_k: int
    audio: bool
    def __init__(self, points: _Optional[int] = ..., bundle_id: _Optional[str] = ..., bundle_name: _Optional[str] = ..., dim: _Optional[int] = ..., by_modality: _Optional[_Mapping[str, int]] = ..., store: _Optional[str] = ..., max_top_k: _Optional[int] = ..., audio: _Optional[bool] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("start", "files", "chunk", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: IngestStart
    files: IngestFiles
    chunk: FileChunk
    end: IngestEnd
    def __init__(self, start: _Optional[_Union[IngestStart, _Mapping]] = ..., files: _Optional[_Union[IngestFiles, _Mapping]] = ..., chunk: _Optional[_Union[FileChunk, _Mapping]] = ..., end: _Optional[_Union[IngestEnd, _Mapping]] = ...) -> None: ...

class IngestStart(_message.Message):
    __slots__ = ("sync", "sync_prefix", "index_fields")
    SYNC_FIELD_NUMBER: _ClassVar[int]
    SYNC_PREFIX_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELDS_FIELD_NUMBER: _ClassVar[int]
    sync: bool
    sync_prefix: str
    index_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sync: _Optional[bool] = ..., sync_prefix: _Optional[str] = ..., index_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class IngestFiles(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[FileHeader]
    def __init__(self, files: _Optional[_Iterable[_Union[FileHeader, _Mapping]]] = ...) -> None: ...

class FileHeader(_message.Message):
    __slots__ = ("file_id", "source", "modality", "size", "mtime", "metadata_json", "text", "id", "origin")
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MTIME_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    file_id: int
    source: str
    modality: Modality
    size: int
    mtime: float
    metadata_json: str
    text: str
    id: str
    origin: str
    def __init__(self, file_id: _Optional[int] = ..., source: _Optional[str] = ..., modality: _Optional[_Union[Modality, str]] = ..., size: _Optional[int] = ..., mtime: _Optional[float] = ..., metadata_json: _Optional[str] = ..., text: _Optional[str] = ..., id: _Optional[str] = ..., origin: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("file_id", "data", "last", "error")
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    file_id: int
    data: bytes
    last: bool
    error: str
    def __init__(self, file_id: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class IngestEnd(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("wanted", "outcome", "summary")
    WANTED_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    wanted: FilesWanted
    outcome: FileOutcome
    summary: IngestSummary
    def __init__(self, wanted: _Optional[_Union[FilesWanted, _Mapping]] = ..., outcome: _Optional[_Union[FileOutcome, _Mapping]] = ..., summary: _Optional[_Union[IngestSummary, _Mapping]] = ...) -> None: ...

class FilesWanted(_message.Message):
    __slots__ = ("file_ids", "unchanged")
    FILE_IDS_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    file_ids: _containers.RepeatedScalarFieldContainer[int]
    unchanged: int
    def __init__(self, file_ids: _Optional[_Iterable[int]] = ..., unchanged: _Optional[int] = ...) -> None: ...

class FileOutcome(_message.Message):
    __slots__ = ("file_id", "status", "ids", "media_id", "reason", "stage", "points")
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    MEDIA_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    file_id: int
    status: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    media_id: str
    reason: str
    stage: str
    points: int
    def __init__(self, file_id: _Optional[int] = ..., status: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., media_id: _Optional[str] = ..., reason: _Optional[str] = ..., stage: _Optional[str] = ..., points: _Optional[int] = ...) -> None: ...

class IngestSummary(_message.Message):
    __slots__ = ("indexed", "unchanged", "quarantined", "failed", "removed", "points", "seconds", "items_per_s")
    INDEXED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_PER_S_FIELD_NUMBER: _ClassVar[int]
    indexed: int
    unchanged: int
    quarantined: int
    failed: int
    removed: int
    points: int
    seconds: float
    items_per_s: float
    def __init__(self, indexed: _Optional[int] = ..., unchanged: _Optional[int] = ..., quarantined: _Optional[int] = ..., failed: _Optional[int] = ..., removed: _Optional[int] = ..., points: _Optional[int] = ..., seconds: _Optional[float] = ..., items_per_s: _Optional[float] = ...) -> None: ...

class PointData(_message.Message):
    __slots__ = ("id", "vector", "frames", "payload_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    frames: _containers.RepeatedScalarFieldContainer[float]
    payload_json: str
    def __init__(self, id: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., frames: _Optional[_Iterable[float]] = ..., payload_json: _Optional[str] = ...) -> None: ...

class WritePointsRequest(_message.Message):
    __slots__ = ("bundle_id", "points")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    points: _containers.RepeatedCompositeFieldContainer[PointData]
    def __init__(self, bundle_id: _Optional[str] = ..., points: _Optional[_Iterable[_Union[PointData, _Mapping]]] = ...) -> None: ...

class WritePointsResponse(_message.Message):
    __slots__ = ("written", "removed", "namespace", "dim")
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    written: int
    removed: int
    namespace: str
    dim: int
    def __init__(self, written: _Optional[int] = ..., removed: _Optional[int] = ..., namespace: _Optional[str] = ..., dim: _Optional[int] = ...) -> None: ...

class ReindexRequest(_message.Message):
    __slots__ = ("bundle", "allow_missing", "drop_old")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    DROP_OLD_FIELD_NUMBER: _ClassVar[int]
    bundle: str
    allow_missing: bool
    drop_old: bool
    def __init__(self, bundle: _Optional[str] = ..., allow_missing: _Optional[bool] = ..., drop_old: _Optional[bool] = ...) -> None: ...

class ReindexResponse(_message.Message):
    __slots__ = ("progress", "report")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    progress: ReindexProgress
    report: ReindexReport
    def __init__(self, progress: _Optional[_Union[ReindexProgress, _Mapping]] = ..., report: _Optional[_Union[ReindexReport, _Mapping]] = ...) -> None: ...

class ReindexProgress(_message.Message):
    __slots__ = ("phase", "items", "done", "indexed", "unchanged", "missing", "changed", "removed", "points", "elapsed")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_FIELD_NUMBER: _ClassVar[int]
    phase: str
    items: int
    done: int
    indexed: int
    unchanged: int
    missing: int
    changed: int
    removed: int
    points: int
    elapsed: float
    def __init__(self, phase: _Optional[str] = ..., items: _Optional[int] = ..., done: _Optional[int] = ..., indexed: _Optional[int] = ..., unchanged: _Optional[int] = ..., missing: _Optional[int] = ..., changed: _Optional[int] = ..., removed: _Optional[int] = ..., points: _Optional[int] = ..., elapsed: _Optional[float] = ...) -> None: ...

class MissingItem(_message.Message):
    __slots__ = ("source", "media_id", "modality", "tenant", "reason", "stage")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_ID_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    source: str
    media_id: str
    modality: str
    tenant: str
    reason: str
    stage: str
    def __init__(self, source: _Optional[str] = ..., media_id: _Optional[str] = ..., modality: _Optional[str] = ..., tenant: _Optional[str] = ..., reason: _Optional[str] = ..., stage: _Optional[str] = ...) -> None: ...

class ReindexReport(_message.Message):
    __slots__ = ("old_collection", "new_collection", "old_bundle_id", "new_bundle_id", "items", "indexed", "unchanged", "points", "removed", "missing_count", "missing", "changed", "switched", "refused", "dropped", "seconds")
    OLD_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    NEW_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    OLD_BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    MISSING_COUNT_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    SWITCHED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    old_collection: str
    new_collection: str
    old_bundle_id: str
    new_bundle_id: str
    items: int
    indexed: int
    unchanged: int
    points: int
    removed: int
    missing_count: int
    missing: _containers.RepeatedCompositeFieldContainer[MissingItem]
    changed: _containers.RepeatedScalarFieldContainer[str]
    switched: bool
    refused: str
    dropped: _containers.RepeatedScalarFieldContainer[str]
    seconds: float
    def __init__(self, old_collection: _Optional[str] = ..., new_collection: _Optional[str] = ..., old_bundle_id: _Optional[str] = ..., new_bundle_id: _Optional[str] = ..., items: _Optional[int] = ..., indexed: _Optional[int] = ..., unchanged: _Optional[int] = ..., points: _Optional[int] = ..., removed: _Optional[int] = ..., missing_count: _Optional[int] = ..., missing: _Optional[_Iterable[_Union[MissingItem, _Mapping]]] = ..., changed: _Optional[_Iterable[str]] = ..., switched: _Optional[bool] = ..., refused: _Optional[str] = ..., dropped: _Optional[_Iterable[str]] = ..., seconds: _Optional[float] = ...) -> None: ...
