"""Request and response bodies of the HTTP service (pydantic): what a client may send, checked
before any model sees it, so a malformed body is a 422 naming the field."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ItemId = int | str  # the ids of the run's data file (numbers stay numbers)
MAX_K = 100
MAX_HISTORY = 1024


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored


class SearchRequest(_Body):
    query: str = Field(min_length=1, max_length=256)
    k: int = Field(10, ge=1, le=MAX_K)
    history: list[ItemId] | None = Field(None, max_length=MAX_HISTORY)  # personalise with the recommender
    reranker: Literal["gbdt_fast", "gbdt", "cross_encoder", "bi_encoder"] | None = None


class SearchHit(BaseModel):
    product_id: str
    title: str
    score: float


class SearchResponse(BaseModel):
    results: list[SearchHit]
    timings_ms: dict[str, float]  # stages of the batch this request ran in


class RecommendRequest(_Body):
    history: list[ItemId] = Field(default_factory=list, max_length=MAX_HISTORY)
    session_id: str | None = Field(None, min_length=1, max_length=128)  # events posted to /events
    k: int = Field(10, ge=1, le=MAX_K)
    exclude_history: bool = True

    @model_validator(mode="after")
    def _something_to_go_on(self) -> RecommendRequest:
        if not self.history and self.session_id is None:
            raise ValueError("give history (item ids, oldest first) or session_id")
        return self


class Recommended(BaseModel):
    item_id: ItemId
    score: float


class RecommendResponse(BaseModel):
    items: list[Recommended]
    history_length: int  # items the model read (session events included)


class Candidate(_Body):
    categorical: dict[str, int] = Field(default_factory=dict)  # missing fields are 0 (unknown)
    numeric: dict[str, float] = Field(default_factory=dict)
    sequences: dict[str, list[int]] = Field(default_factory=dict)


class RankRequest(_Body):
    candidates: list[Candidate] = Field(min_length=1, max_length=512)


class RankedCandidate(BaseModel):
    index: int  # position in the request
    satisfaction: float
    click: float | None = None
    cvr: float | None = None
    dwell_log: float | None = None


class RankResponse(BaseModel):
    candidates: list[RankedCandidate]  # best satisfaction first


class NewItem(_Body):
    item_id: ItemId
    title: str = Field(min_length=1, max_length=512)


class ItemsRequest(_Body):
    items: list[NewItem] = Field(min_length=1, max_length=1000)


class ItemsResponse(BaseModel):
    searchable: int  # products now in the search catalogue
    recommendable: int  # products now in the recommender's catalogue
    notes: list[str] = []  # why a served run did not take them


class Event(_Body):
    session_id: str = Field(min_length=1, max_length=128)
    item_id: ItemId
    behavior: Literal["click", "cart", "purchase"] = "click"
    timestamp: float | None = None


class EventsRequest(_Body):
    events: list[Event] = Field(min_length=1, max_length=1000)


class EventsResponse(BaseModel):
    accepted: int
    sessions: dict[str, int]  # session id -> items it now holds
