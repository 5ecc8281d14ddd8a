"""Segments (category, price band, brand): escalation and correction rates, bias flags."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Literal

from scipy import stats

from serving.kpis.common import NO_BRAND, ItemView, item_views, price_band
from serving.kpis.schemas import Dimension, SegmentKpi, SegmentKpis
from serving.kpis.statistics import holm
from serving.settings import DashboardSettings
from serving.store import Store

DIMENSIONS: tuple[Dimension, ...] = ("category", "price_band", "brand")


def _segment_order(key: tuple[Dimension, str], bounds: Sequence[float]) -> tuple[int, int, str]:
    """Dimensions in a fixed order; price bands from cheap to expensive, the rest by name."""
    dimension, name = key
    rank = 0
    if dimension == "price_band":
        bands = [price_band(None, bounds), *(price_band(b - 1e-9, bounds) for b in bounds)]
        bands.append(price_band(bounds[-1], bounds) if bounds else "all")
        rank = bands.index(name) if name in bands else len(bands)
    return DIMENSIONS.index(dimension), rank, name


def segments(store: Store, config: DashboardSettings, items: list[ItemView] | None = None) -> SegmentKpis:
    views = items if items is not None else item_views(store)
    brand_counts = Counter(i.brand or NO_BRAND for i in views)
    top_brands = {
        b for b, _ in sorted(brand_counts.items(), key=lambda kv: (-kv[1], kv[0]))[: config.top_brands]
    }
    groups: dict[tuple[Dimension, str], list[ItemView]] = defaultdict(list)
    for i in views:
        groups[("category", i.label)].append(i)
        groups[("price_band", price_band(i.price, config.price_bands))].append(i)
        if (i.brand or NO_BRAND) in top_brands:
            groups[("brand", i.brand or NO_BRAND)].append(i)
    total_reviewed = sum(1 for i in views if i.review is not None)
    total_corrected = sum(1 for i in views if i.corrected)
    found: list[SegmentKpi] = []
    tested: list[int] = []
    p_values: list[float] = []
    for (dimension, name), members in sorted(
        groups.items(), key=lambda kv: _segment_order(kv[0], config.price_bands)
    ):
        reviewed = sum(1 for i in members if i.review is not None)
        corrected = sum(1 for i in members if i.corrected)
        rest_reviewed, rest_corrected = total_reviewed - reviewed, total_corrected - corrected
        p_value: float | None = None
        if reviewed >= config.min_segment_size and rest_reviewed >= config.min_segment_size:
            table = [[corrected, reviewed - corrected], [rest_corrected, rest_reviewed - rest_corrected]]
            p_value = float(stats.fisher_exact(table, alternative="two-sided").pvalue)
            tested.append(len(found))
            p_values.append(p_value)
        rate = corrected / reviewed if reviewed else None
        rest_rate = rest_corrected / rest_reviewed if rest_reviewed else None
        escalated = sum(1 for i in members if i.decision == "escalated")
        found.append(
            SegmentKpi(
                dimension=dimension,
                segment=name,
                items=len(members),
                escalated=escalated,
                escalation_rate=escalated / len(members),
                reviewed=reviewed,
                corrected=corrected,
                correction_rate=rate,
                rest_correction_rate=rest_rate,
                p_value=p_value,
                p_adjusted=None,
                flagged=False,
                direction=None,
            )
        )
    for index, adjusted in zip(tested, holm(p_values), strict=True):
        segment = found[index]
        flagged = adjusted < config.significance
        direction: Literal["higher", "lower"] | None = None
        if flagged and segment.correction_rate is not None and segment.rest_correction_rate is not None:
            direction = "higher" if segment.correction_rate > segment.rest_correction_rate else "lower"
        found[index] = segment.model_copy(
            update={"p_adjusted": adjusted, "flagged": flagged, "direction": direction}
        )
    return SegmentKpis(
        significance=config.significance,
        min_segment_size=config.min_segment_size,
        tested=len(tested),
        segments=found,
    )
