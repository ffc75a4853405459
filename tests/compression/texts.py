"""Texts the compression tests share: varied on purpose (prose, lists, code, CJK, numbers)."""

from __future__ import annotations

from tests.compression.helpers import generated_texts

HANDWRITTEN = [
    "The council met on Monday. Members agreed to approve the budget for the new park, "
    "after a long discussion about water and road costs.",
    "Item 4: public hearing on the school project.\nStaff recommend approval.\n"
    "Vote: 7 in favour, 2 against, 1 abstaining.",
    "北京是中国的首都。东京是日本的首都。会议预算已经批准了。",
    "東京は日本の首都です。会議は月曜日に開かれました。",
    "Revenue rose 12.5% in the third quarter, to 4,200 thousand; costs fell 3 percent.",
    "Q: Where was the meeting held?\nA: In the city hall, room 204, at 10:30.",
    "- buy milk\n- call the council about the road\n- finish the report by Tuesday\n",
    "def approve(item):\n    return item.vote > 0.5  # majority\n\nprint(approve(x))",
    '{"name": "park plan", "budget": 1200000, "approved": true, "members": ["Ann", "Bo"]}',
    "See https://example.org/minutes?id=42 or write to clerk@city.gov for the minutes.",
    "Zürich's café served a naïve résumé über Straße; the coördinate was wrong.",
    "He said: \"we will vote next week\" — and then left (without a word).",
    "The motion was approved!!! Really? Yes... finally; after 3 months & 2 hearings.",
    "1999 2000 2001 2002 2003 2004 2005 2006 2007 2008 2009 2010",
    # A long run without sentence ends: the chunker cannot back off and cuts a full window.
    " ".join(["council budget meeting water road park plan approve"] * 90),
    # A long text of many sentences: several chunks that end on a full stop.
    " ".join(["The members agreed to the proposal for the city park. "
              "Staff recommend a public hearing in July, with 3 options."] * 30),
]

CONFORMANCE_TEXTS = HANDWRITTEN + generated_texts(12, seed=0)
