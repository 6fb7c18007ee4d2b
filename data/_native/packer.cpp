// data._packer: native twin of data/pack.py (pack_bfd_ref, pack_documents_ref, build_row_index_ref).
//
// Contract: bit-identical output to the NumPy twin (data/pack.py states it in full).
// pack_bfd: documents are taken in decreasing length, ties by increasing index; each goes into
// the open row with the least remaining capacity that fits, lowest row id among equal
// capacities; a new row is opened when none fits. pack_documents: that, then the repair: the
// documents of the emptiest rows are re-packed one row at a time (longest pending document plus
// the subset of the others that fills the row best), and the rows are renumbered in packing
// order. Inputs are validated in Python (lengths in [1, seq_len], row ids >= 0), so this file
// only computes.
//
// Data structures: rows live in buckets by remaining capacity (0..seq_len); each bucket is a
// min-heap of row ids (lowest id on top), and a 64-ary bit tree over the buckets answers
// "smallest non-empty bucket >= len" in O(log_64 seq_len). The decreasing-length order is a
// stable counting sort over lengths (O(n + seq_len)), so a pack is O(n log n) in the heaps only.
// The repair fills a row with a bitset subset-sum over the pending lengths (O(seq_len^2 / 64)
// word operations per row at most). The GIL is released while computing.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

namespace py = pybind11;
using i64 = std::int64_t;
using u64 = std::uint64_t;
using Array = py::array_t<i64, py::array::c_style | py::array::forcecast>;

namespace {

// Set of integers in [0, n) with find-next >= i. Level 0 holds one bit per integer; bit j of
// level k+1 is set iff word j of level k is non-zero.
class BitTree {
 public:
  explicit BitTree(std::size_t n) {
    std::size_t words = n;
    do {
      words = (words + 63) / 64;
      levels_.emplace_back(words, 0);
    } while (words > 1);
  }

  void insert(std::size_t i) {
    for (auto& level : levels_) {
      u64& word = level[i >> 6];
      const bool had_bits = word != 0;
      word |= u64{1} << (i & 63);
      if (had_bits) return;  // the levels above already mark this word
      i >>= 6;
    }
  }

  void erase(std::size_t i) {
    for (auto& level : levels_) {
      u64& word = level[i >> 6];
      word &= ~(u64{1} << (i & 63));
      if (word != 0) return;  // the word still has members: the levels above stay marked
      i >>= 6;
    }
  }

  // Smallest member >= i, or -1.
  i64 next(std::size_t i) const {
    std::size_t k = 0;
    for (; k < levels_.size(); ++k) {  // climb until a word has a member at or after i
      const std::size_t w = i >> 6;
      if (w >= levels_[k].size()) return -1;
      const u64 bits = levels_[k][w] & (~u64{0} << (i & 63));
      if (bits != 0) {
        i = (w << 6) | static_cast<std::size_t>(__builtin_ctzll(bits));
        break;
      }
      i = w + 1;
    }
    if (k == levels_.size()) return -1;
    while (k > 0) {  // descend along the lowest set bits
      --k;
      i = (i << 6) | static_cast<std::size_t>(__builtin_ctzll(levels_[k][i]));
    }
    return static_cast<i64>(i);
  }

 private:
  std::vector<std::vector<u64>> levels_;
};

// What the repair needs to know about the best-fit rows, gathered while packing.
struct Rows {
  std::vector<i64> fill;    // tokens per row
  std::vector<i64> opener;  // the document that opened the row (its first in packing order)
};

// kRows: also return what the repair needs (a compile-time switch: the store per opened row
// costs plain best fit ~10%, measured on 10M documents).
template <bool kRows>
Rows pack_bfd_impl(const i64* lengths, i64 n, i64 seq_len, i64* row_of) {
  // Stable counting sort, longest first: order[first[c]:first[c+1]] are the documents of length
  // seq_len - c in increasing index. Walking the groups gives each document's length without a
  // random read of lengths[] (that cache miss was ~75% of the run time on 10M documents).
  std::vector<i64> first(seq_len + 2, 0);
  for (i64 i = 0; i < n; ++i) ++first[seq_len - lengths[i] + 1];
  for (i64 c = 1; c <= seq_len + 1; ++c) first[c] += first[c - 1];
  std::vector<i64> order(n);
  {
    std::vector<i64> cursor(first.begin(), first.end() - 1);
    for (i64 i = 0; i < n; ++i) order[cursor[seq_len - lengths[i]]++] = i;
  }

  std::vector<std::vector<i64>> buckets(seq_len + 1);  // remaining capacity -> min-heap of rows
  BitTree nonempty(seq_len + 1);
  const std::greater<i64> min_heap;
  Rows rows;
  i64 n_rows = 0;
  for (i64 c = 0; c < seq_len; ++c) {
    const i64 need = seq_len - c;
    for (i64 k = first[c]; k < first[c + 1]; ++k) {
      i64 room = nonempty.next(static_cast<std::size_t>(need));
      i64 row;
      if (room >= 0) {
        auto& heap = buckets[room];
        std::pop_heap(heap.begin(), heap.end(), min_heap);
        row = heap.back();
        heap.pop_back();
        if (heap.empty()) nonempty.erase(room);
      } else {
        row = n_rows++;
        room = seq_len;
        if constexpr (kRows) rows.opener.push_back(order[k]);
      }
      row_of[order[k]] = row;
      room -= need;
      if (room > 0) {  // a full row can take nothing more (lengths >= 1): never store it
        auto& heap = buckets[room];
        if (heap.empty()) nonempty.insert(room);
        heap.push_back(row);
        std::push_heap(heap.begin(), heap.end(), min_heap);
      }
    }
  }
  if constexpr (kRows) {  // a row's fill, read off the buckets: full rows are in none of them
    rows.fill.assign(n_rows, seq_len);
    for (i64 room = 1; room <= seq_len; ++room)
      for (const i64 row : buckets[room]) rows.fill[row] = seq_len - room;
  }
  return rows;
}

// The repair (data/pack.py, pack_documents_ref, is the spec this follows step by step).
void repair_impl(const i64* lengths, i64 n, i64 seq_len, i64 max_rows, const Rows& rows,
                 i64* row_of) {
  const i64 n_rows = static_cast<i64>(rows.fill.size());
  // 1. the rows to dissolve: not full, emptiest first (ties: lower row id), at most max_rows.
  //    Counting sort by fill, rows in increasing id.
  std::vector<i64> by_fill(seq_len + 1, 0);  // then: where rows of fill f start in order_rows
  for (i64 r = 0; r < n_rows; ++r)
    if (rows.fill[r] < seq_len) ++by_fill[rows.fill[r] + 1];
  for (i64 f = 1; f <= seq_len; ++f) by_fill[f] += by_fill[f - 1];
  std::vector<i64> order_rows(by_fill[seq_len]);
  for (i64 r = 0; r < n_rows; ++r)
    if (rows.fill[r] < seq_len) order_rows[by_fill[rows.fill[r]]++] = r;
  const i64 k = std::min(max_rows, static_cast<i64>(order_rows.size()));
  if (k < 2) return;  // one row re-packed alone comes back as itself
  std::vector<char> dissolved(n_rows, 0);
  for (i64 j = 0; j < k; ++j) dissolved[order_rows[j]] = 1;

  // 2. the pending documents by length, each length's in increasing index: pool[start[v]...]
  std::vector<i64> start(seq_len + 2, 0);
  for (i64 i = 0; i < n; ++i)
    if (dissolved[row_of[i]]) ++start[lengths[i] + 1];
  for (i64 v = 1; v <= seq_len + 1; ++v) start[v] += start[v - 1];
  std::vector<i64> head(start.begin(), start.end() - 1);  // next pending document of length v
  const i64 pool_n = start[seq_len + 1];
  std::vector<i64> pool(pool_n);
  {
    std::vector<i64> cursor(head);
    for (i64 i = 0; i < n; ++i)
      if (dissolved[row_of[i]]) pool[cursor[lengths[i]]++] = i;
  }
  auto pending = [&](i64 v) { return start[v + 1] - head[v]; };
  std::vector<u64> has((seq_len >> 6) + 1, 0);  // bit v: a document of length v is pending
  for (i64 v = 1; v <= seq_len; ++v)
    if (pending(v) > 0) has[v >> 6] |= u64{1} << (v & 63);
  auto longest_upto = [&](i64 v) -> i64 {  // longest pending length <= v, 0 if none
    i64 w = v >> 6;
    u64 bits = has[w] & ((v & 63) == 63 ? ~u64{0} : (u64{1} << ((v & 63) + 1)) - 1);
    while (bits == 0) {
      if (w == 0) return 0;
      bits = has[--w];
    }
    return (w << 6) | (63 - __builtin_clzll(bits));
  };

  // 3. minimum bin slack: each new row = the longest pending document + the subset of pending
  //    documents that best fills the rest, found by a bitset subset-sum over distinct lengths,
  //    longest first, stopping at an exact fill; first_step[s] = the step that first reached s.
  std::vector<i64> new_row(pool_n);   // new row of pool[j]
  std::vector<i64> new_opener;        // first document (packing order) of each new row
  std::vector<u64> reach((seq_len >> 6) + 1);
  std::vector<std::int32_t> first_step(seq_len);
  std::vector<i64> steps;
  auto take = [&](i64 v, i64 row) {  // the next pending document of length v joins row
    new_row[head[v]++] = row;
    if (pending(v) == 0) has[v >> 6] &= ~(u64{1} << (v & 63));
  };
  for (i64 top = longest_upto(seq_len); top > 0; top = longest_upto(top)) {
    const i64 row = static_cast<i64>(new_opener.size());
    new_opener.push_back(pool[head[top]]);
    take(top, row);
    const i64 c = seq_len - top;
    const i64 words = (c >> 6) + 1;
    const u64 last_mask = (c & 63) == 63 ? ~u64{0} : (u64{1} << ((c & 63) + 1)) - 1;
    std::fill(reach.begin(), reach.begin() + words, 0);
    reach[0] = 1;
    i64 hi = 0;  // highest non-zero word of reach: a shift by v writes no higher than hi + q + 1
    steps.clear();
    auto exact = [&] { return (reach[c >> 6] >> (c & 63)) & 1; };
    for (i64 v = longest_upto(std::min(c, top)); v > 0 && !exact(); v = longest_upto(v - 1)) {
      const i64 copies = std::min(pending(v), c / v);
      steps.push_back(v);
      const auto step = static_cast<std::int32_t>(steps.size());
      const i64 q = v >> 6, s = v & 63;
      for (i64 j = 0; j < copies; ++j) {
        bool grew = false;
        const i64 w_hi = std::min(words - 1, hi + q + 1);
        for (i64 w = w_hi; w >= q; --w) {  // high to low: sources are at or below w
          u64 shifted = reach[w - q] << s;
          if (s != 0 && w - q >= 1) shifted |= reach[w - q - 1] >> (64 - s);
          u64 fresh = shifted & ~reach[w];
          if (w == words - 1) fresh &= last_mask;
          if (fresh == 0) continue;
          grew = true;
          hi = std::max(hi, w);
          reach[w] |= fresh;
          for (; fresh != 0; fresh &= fresh - 1)
            first_step[(w << 6) | __builtin_ctzll(fresh)] = static_cast<std::int32_t>(step);
        }
        if (!grew || exact()) break;
      }
    }
    i64 t = c;
    while (!((reach[t >> 6] >> (t & 63)) & 1)) --t;
    while (t > 0) {
      const i64 v = steps[first_step[t] - 1];
      take(v, row);
      t -= v;
    }
  }
  const i64 n_new = static_cast<i64>(new_opener.size());
  if (n_new >= k) return;  // no fewer rows: keep best fit

  // 4. renumber in packing order of each row's first document (longer first, then lower
  //    index): kept rows are in that order by id (best fit opens rows in packing order), new
  //    rows in the order they were made; merge the two.
  auto before = [&](i64 a, i64 b) {  // document a comes before document b in packing order
    return lengths[a] != lengths[b] ? lengths[a] > lengths[b] : a < b;
  };
  std::vector<i64> renum(n_rows, -1), renum_new(n_new);
  i64 next_id = 0, r = 0, j = 0;
  while (r < n_rows || j < n_new) {
    if (r < n_rows && dissolved[r]) { ++r; continue; }
    if (j >= n_new || (r < n_rows && before(rows.opener[r], new_opener[j])))
      renum[r++] = next_id++;
    else
      renum_new[j++] = next_id++;
  }
  for (i64 i = 0; i < n; ++i)
    if (!dissolved[row_of[i]]) row_of[i] = renum[row_of[i]];
  for (i64 p = 0; p < pool_n; ++p) row_of[pool[p]] = renum_new[new_row[p]];
}

py::array_t<i64> pack_bfd(const Array& lengths, i64 seq_len) {
  const i64 n = lengths.size();
  py::array_t<i64> row_of(n);
  const i64* in = lengths.data();
  i64* out = row_of.mutable_data();
  {
    py::gil_scoped_release release;
    pack_bfd_impl<false>(in, n, seq_len, out);
  }
  return row_of;
}

py::array_t<i64> pack_documents(const Array& lengths, i64 seq_len, i64 max_repair_rows) {
  const i64 n = lengths.size();
  py::array_t<i64> row_of(n);
  const i64* in = lengths.data();
  i64* out = row_of.mutable_data();
  {
    py::gil_scoped_release release;
    const Rows rows = pack_bfd_impl<true>(in, n, seq_len, out);
    repair_impl(in, n, seq_len, max_repair_rows, rows, out);
  }
  return row_of;
}

// Counting sort by row id: stable, so each row's documents come in increasing index.
py::tuple build_row_index(const Array& row_ids, i64 n_rows) {
  const i64 n = row_ids.size();
  py::array_t<i64> offsets(n_rows + 1);
  py::array_t<i64> doc_order(n);
  const i64* rows = row_ids.data();
  i64* off = offsets.mutable_data();
  i64* order = doc_order.mutable_data();
  {
    py::gil_scoped_release release;
    std::fill(off, off + n_rows + 1, 0);
    for (i64 i = 0; i < n; ++i) ++off[rows[i] + 1];
    for (i64 r = 0; r < n_rows; ++r) off[r + 1] += off[r];
    std::vector<i64> cursor(off, off + n_rows);
    for (i64 i = 0; i < n; ++i) order[cursor[rows[i]]++] = i;
  }
  return py::make_tuple(offsets, doc_order);
}

}  // namespace

PYBIND11_MODULE(_packer, m) {
  m.doc() = "Native document packing; NumPy twin and contract in data/pack.py.";
  m.def("pack_bfd", &pack_bfd, py::arg("lengths"), py::arg("seq_len"),
        "Best-fit-decreasing row id per document (int64). Inputs validated by data.pack.");
  m.def("pack_documents", &pack_documents, py::arg("lengths"), py::arg("seq_len"),
        py::arg("max_repair_rows"),
        "Best fit decreasing + repair, row id per document (int64). Inputs validated by data.pack.");
  m.def("build_row_index", &build_row_index, py::arg("row_ids"), py::arg("n_rows"),
        "(row_offsets (R+1,), doc_order (n,)) CSR layout. Inputs validated by data.pack.");
}
