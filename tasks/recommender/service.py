"""The recommender's online service: ``POST /recommend`` and ``POST /reach`` for one region.

It runs inside the region: a shopper's history is read from the region's own data directory at
start and never leaves the process (a request names the shopper, or sends recent item ids the
platform already holds). Each model version is a ``Ranker`` built off to the side by the
follower; a request takes the one served when it starts and finishes on it, so a swap never
fails a request. Scores are the federated evaluation's (``ModelScorer.score``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from serving.batching import MicroBatcher
from serving.follower import Served
from shared.codec import Weights
from tasks.recommender.dataset import ATTRIBUTES, DataError
from tasks.recommender.local_data import load_region, load_shared
from tasks.recommender.recommend import Query, Ranker, region_now, shopper_history
from tasks.recommender.serve_cli import MAX_K

MAX_ITEMS = 5000  # ids in one request's recent_items or exclude
LATEST_TIME = 2**62  # "at" must fit the model's int64 clock

# ids beyond 32 bits are no catalogue's: refused by the schema before numpy sees them
ItemId = Annotated[StrictInt, Field(ge=-(2**31), le=2**31 - 1)]
ItemIds = Annotated[list[ItemId], Field(max_length=MAX_ITEMS)]


class RecommendRequest(BaseModel):
    """A shopper of this region (their history is read here), or a history the platform holds."""

    model_config = ConfigDict(extra="forbid")
    shopper: StrictInt | None = Field(None, description="A shopper id of this region's data.")
    recent_items: ItemIds | None = Field(
        None, description="Item ids the shopper interacted with, oldest first (the last 20 count)."
    )
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="How many items.")
    exclude: ItemIds = Field(default_factory=list, description="Item ids never to recommend.")
    exclude_seen: StrictBool = Field(True, description="Leave out the history's own items.")
    at: StrictInt | None = Field(
        None, ge=0, le=LATEST_TIME,
        description="Unix time to rank at (items launched later are left out); default: the "
                    "region's latest event.",
    )  # fmt: skip

    @model_validator(mode="after")
    def one_history(self) -> RecommendRequest:
        if (self.shopper is None) == (self.recent_items is None):
            raise ValueError("give either shopper or recent_items")
        return self


class ReachRequest(BaseModel):
    """A new item, described by its attributes: which share of this region's shoppers would
    see it in their top k (the cold-start question)."""

    model_config = ConfigDict(extra="forbid")
    attributes: Annotated[dict[StrictStr, StrictStr], Field(max_length=32)] = Field(
        description="category, metal, gem, colour, gender: values the catalogue knows."
    )
    price: float = Field(ge=0, allow_inf_nan=False)
    k: StrictInt = Field(10, ge=1, le=MAX_K)


class RecommenderService:
    """One region's data, loaded once, and the routes that rank with the served model."""

    def __init__(self, data_dir: Path, region: str, settings: Mapping[str, Any]) -> None:
        from tasks.recommender.task import TASK

        self.shared = load_shared(data_dir)
        self.data = load_region(data_dir, region, self.shared)
        self.region = region
        self.region_index = self.shared.meta.regions.index(region)
        self.now = region_now(self.data)
        self.n_items = len(self.shared.catalogue)
        self.items = [self.shared.catalogue.describe(i) for i in range(self.n_items)]
        self._model = lambda weights: TASK.model(weights, self.shared, settings)
        # requests that arrive while the model is busy are ranked together by its next call
        self.batcher: MicroBatcher[Query, tuple] = MicroBatcher(
            lambda ranker, queries: ranker.top_of(queries)
        )

    def build(self, weights: Weights) -> Ranker:
        return Ranker(self._model(weights), self.shared)

    def router(self, current: Callable[[], Served[Ranker] | None]) -> APIRouter:
        api = APIRouter()

        def served() -> Served[Ranker]:
            model = current()
            if model is None:
                raise HTTPException(503, "no model loaded yet (see /readyz)")
            return model

        @api.post("/recommend", summary="A shopper's top-k items, from the newest model")
        async def recommend(request: RecommendRequest) -> JSONResponse:
            model = served()  # this request's model, whatever swaps meanwhile
            at = self.now if request.at is None else request.at
            if request.shopper is not None:
                try:
                    history, at = shopper_history(self.data, request.shopper, at)
                except DataError as exc:
                    raise HTTPException(404, str(exc)) from None
            else:
                history = np.asarray(request.recent_items, dtype=np.int64)
            exclude = np.asarray(request.exclude, dtype=np.int64)
            self._check_ids(history, "recent_items")
            self._check_ids(exclude, "exclude")
            if request.exclude_seen:
                exclude = np.concatenate([exclude, history])
            query = Query(history, self.region_index, at, request.k, exclude)
            best, scores = await self.batcher.submit(model.model, query)
            items = [{"rank": rank, "score": float(s), **self.items[i]}
                     for rank, (i, s) in enumerate(zip(best.tolist(), scores.tolist(),
                                                       strict=True), start=1)]  # fmt: skip
            return JSONResponse({"model_version": model.version, "region": self.region, "at": at,
                                 "shopper": request.shopper, "items": items})  # fmt: skip

        @api.post("/reach", summary="The share of this region's shoppers a new item reaches")
        def reach(request: ReachRequest) -> JSONResponse:  # a thread: its first call per k is long
            model = served()
            unknown = sorted(set(request.attributes) - set(ATTRIBUTES))
            if unknown:
                raise HTTPException(422, f"attributes: unknown {', '.join(unknown)} (an item has "
                                         f"{', '.join(ATTRIBUTES)})")  # fmt: skip
            try:
                codes = self.shared.features.encode(request.attributes, request.price)
            except ValueError as exc:
                raise HTTPException(422, f"attributes: {exc}") from None
            reached = model.model.reach(self.data, codes, request.k)
            users = len(self.data.split.test)
            return JSONResponse({"model_version": model.version, "region": self.region,
                                 "k": request.k, "shoppers": users, "shoppers_reached": reached,
                                 "shown_to": reached / users if users else 0.0})  # fmt: skip

        return api

    def _check_ids(self, ids: np.ndarray, field: str) -> None:
        bad = ids[(ids < 0) | (ids >= self.n_items)]
        if len(bad):
            shown = ", ".join(str(int(i)) for i in np.unique(bad)[:5])
            raise HTTPException(422, f"{field}: unknown item ids {shown} (the catalogue's ids "
                                     f"are 0 to {self.n_items - 1})")  # fmt: skip
