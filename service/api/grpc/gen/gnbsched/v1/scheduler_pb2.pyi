from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CellsRequest(_message.Message):
    __slots__ = ("cells",)
    CELLS_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedCompositeFieldContainer[SlotRequest]
    def __init__(self, cells: _Optional[_Iterable[_Union[SlotRequest, _Mapping]]] = ...) -> None: ...

class CellsDecision(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[SlotDecision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[SlotDecision, _Mapping]]] = ...) -> None: ...

class Matrix(_message.Message):
    __slots__ = ("rows", "cols", "values")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class Feedback(_message.Message):
    __slots__ = ("user_ids", "delivered_bits")
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_BITS_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[int]
    delivered_bits: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, user_ids: _Optional[_Iterable[int]] = ..., delivered_bits: _Optional[_Iterable[float]] = ...) -> None: ...

class SlotRequest(_message.Message):
    __slots__ = ("cell_id", "slot", "preset", "policy", "deadline_ms", "max_resources_per_user", "tti_s", "rb_per_rbg", "noise_density_dbm_hz", "user_ids", "rx_power_dbm", "spectral_efficiency", "buffer_bits", "eligible", "retx_bits", "retx_rbgs", "resource_ids", "bandwidth_hz", "available", "interference_dbm", "rate_bps", "utility", "fading_gain", "feedback", "epoch")
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_RESOURCES_PER_USER_FIELD_NUMBER: _ClassVar[int]
    TTI_S_FIELD_NUMBER: _ClassVar[int]
    RB_PER_RBG_FIELD_NUMBER: _ClassVar[int]
    NOISE_DENSITY_DBM_HZ_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    RX_POWER_DBM_FIELD_NUMBER: _ClassVar[int]
    SPECTRAL_EFFICIENCY_FIELD_NUMBER: _ClassVar[int]
    BUFFER_BITS_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    RETX_BITS_FIELD_NUMBER: _ClassVar[int]
    RETX_RBGS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_IDS_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_HZ_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    INTERFERENCE_DBM_FIELD_NUMBER: _ClassVar[int]
    RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    UTILITY_FIELD_NUMBER: _ClassVar[int]
    FADING_GAIN_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    cell_id: str
    slot: int
    preset: str
    policy: str
    deadline_ms: float
    max_resources_per_user: int
    tti_s: float
    rb_per_rbg: int
    noise_density_dbm_hz: float
    user_ids: _containers.RepeatedScalarFieldContainer[int]
    rx_power_dbm: _containers.RepeatedScalarFieldContainer[float]
    spectral_efficiency: _containers.RepeatedScalarFieldContainer[float]
    buffer_bits: _containers.RepeatedScalarFieldContainer[float]
    eligible: _containers.RepeatedScalarFieldContainer[bool]
    retx_bits: _containers.RepeatedScalarFieldContainer[float]
    retx_rbgs: _containers.RepeatedScalarFieldContainer[int]
    resource_ids: _containers.RepeatedScalarFieldContainer[int]
    bandwidth_hz: _containers.RepeatedScalarFieldContainer[float]
    available: _containers.RepeatedScalarFieldContainer[bool]
    interference_dbm: _containers.RepeatedScalarFieldContainer[float]
    rate_bps: Matrix
    utility: Matrix
    fading_gain: Matrix
    feedback: Feedback
    epoch: int
    def __init__(self, cell_id: _Optional[str] = ..., slot: _Optional[int] = ..., preset: _Optional[str] = ..., policy: _Optional[str] = ..., deadline_ms: _Optional[float] = ..., max_resources_per_user: _Optional[int] = ..., tti_s: _Optional[float] = ..., rb_per_rbg: _Optional[int] = ..., noise_density_dbm_hz: _Optional[float] = ..., user_ids: _Optional[_Iterable[int]] = ..., rx_power_dbm: _Optional[_Iterable[float]] = ..., spectral_efficiency: _Optional[_Iterable[float]] = ..., buffer_bits: _Optional[_Iterable[float]] = ..., eligible: _Optional[_Iterable[bool]] = ..., retx_bits: _Optional[_Iterable[float]] = ..., retx_rbgs: _Optional[_Iterable[int]] = ..., resource_ids: _Optional[_Iterable[int]] = ..., bandwidth_hz: _Optional[_Iterable[float]] = ..., available: _Optional[_Iterable[bool]] = ..., interference_dbm: _Optional[_Iterable[float]] = ..., rate_bps: _Optional[_Union[Matrix, _Mapping]] = ..., utility: _Optional[_Union[Matrix, _Mapping]] = ..., fading_gain: _Optional[_Union[Matrix, _Mapping]] = ..., feedback: _Optional[_Union[Feedback, _Mapping]] = ..., epoch: _Optional[int] = ...) -> None: ...

class Violation(_message.Message):
    __slots__ = ("kind", "message")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    message: str
    def __init__(self, kind: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Allocation(_message.Message):
    __slots__ = ("user_ids", "resource_counts", "resource_ids")
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_IDS_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[int]
    resource_counts: _containers.RepeatedScalarFieldContainer[int]
    resource_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, user_ids: _Optional[_Iterable[int]] = ..., resource_counts: _Optional[_Iterable[int]] = ..., resource_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class SlotError(_message.Message):
    __slots__ = ("code", "field", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    field: str
    message: str
    def __init__(self, code: _Optional[str] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SlotDecision(_message.Message):
    __slots__ = ("cell_id", "slot", "owner", "allocation", "policy", "fallback", "fallback_reason", "valid_before_repair", "violations", "utility", "timings_us", "policy_version", "replayed", "error")
    class TimingsUsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CELL_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    VALID_BEFORE_REPAIR_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    UTILITY_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_US_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    cell_id: str
    slot: int
    owner: _containers.RepeatedScalarFieldContainer[int]
    allocation: Allocation
    policy: str
    fallback: str
    fallback_reason: str
    valid_before_repair: bool
    violations: _containers.RepeatedCompositeFieldContainer[Violation]
    utility: float
    timings_us: _containers.ScalarMap[str, float]
    policy_version: str
    replayed: bool
    error: SlotError
    def __init__(self, cell_id: _Optional[str] = ..., slot: _Optional[int] = ..., owner: _Optional[_Iterable[int]] = ..., allocation: _Optional[_Union[Allocation, _Mapping]] = ..., policy: _Optional[str] = ..., fallback: _Optional[str] = ..., fallback_reason: _Optional[str] = ..., valid_before_repair: _Optional[bool] = ..., violations: _Optional[_Iterable[_Union[Violation, _Mapping]]] = ..., utility: _Optional[float] = ..., timings_us: _Optional[_Mapping[str, float]] = ..., policy_version: _Optional[str] = ..., replayed: _Optional[bool] = ..., error: _Optional[_Union[SlotError, _Mapping]] = ...) -> None: ...
