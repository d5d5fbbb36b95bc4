package workflows

import (
	"fmt"

	"github.com/bulkflow/bulkflow/activities"
)

// Grouping small files into one DownloadBatch activity (issue 14 §1). An
// activity costs Temporal a few milliseconds of server CPU, three history
// events and a round trip, whatever the file's size: for a file of a few
// hundred resources that is most of its cost. The planner below decides,
// from the manifest's count (and fileSize when the server gives it), which
// consecutive files of a chunk go together. When the manifest gives no size,
// it learns one: after learnAfter files of a kind and type have been
// downloaded, the rest of that type are sized by their mean.
//
// Everything here is a pure function of the chunk's input, the ChunkHints
// activity's result and completed downloads' results, all of which are in
// history: replay makes the same groups. So changing a constant below
// changes the commands of running chunks: it needs a GetVersion patch
// (docs/versioning.md), like any other change of this file.
const (
	// A file is small (may share an activity) up to these sizes.
	smallFileResources = 2_000
	smallFileBytes     = 2 << 20
	// A batch holds up to these totals, and up to maxBatch files.
	batchResources = 20_000
	batchBytes     = 32 << 20
	maxBatch       = 100
	// The window's share of what is left may be smaller: the last
	// activities of a chunk still take this many small files (milliseconds
	// of work), not one each.
	minBatch = 4
	// learnAfter files of a type are downloaded before its mean size stands
	// for the files of that type whose manifest entry gives none.
	learnAfter = 3
)

type sizeStats struct {
	files            int
	resources, bytes int64
}

type batchPlanner struct {
	first int
	hints activities.ChunkHints
	stats map[string]*sizeStats // by kind and type
}

// newBatchPlanner returns nil when the hints do not cover the chunk: its
// files are then downloaded one per activity, as before.
func newBatchPlanner(first, count int, h activities.ChunkHints) *batchPlanner {
	if count < 2 || len(h.Resources) != count || len(h.Bytes) != count {
		return nil
	}
	return &batchPlanner{first: first, hints: h, stats: map[string]*sizeStats{}}
}

func statKey(kind, typ string) string { return kind + "/" + typ }

func (p *batchPlanner) keyOf(i int) string {
	for _, g := range p.hints.Groups {
		if i >= g.First && i < g.First+g.Count {
			return statKey(g.Kind, g.Type)
		}
	}
	return ""
}

// learn counts a downloaded file's size.
func (p *batchPlanner) learn(r activities.FileResult) {
	if p == nil {
		return
	}
	k := statKey(r.Kind, r.Type)
	s := p.stats[k]
	if s == nil {
		s = &sizeStats{}
		p.stats[k] = s
	}
	s.files++
	s.resources += r.Resources
	s.bytes += r.Bytes
}

// estimate returns file i's resources and bytes, -1 where unknown.
func (p *batchPlanner) estimate(i int) (res, bytes int64) {
	res, bytes = p.hints.Resources[i-p.first], p.hints.Bytes[i-p.first]
	if res >= 0 && bytes >= 0 {
		return res, bytes
	}
	s := p.stats[p.keyOf(i)]
	if s == nil || s.files < learnAfter {
		return res, bytes
	}
	if res < 0 {
		res = s.resources / int64(s.files)
	}
	if bytes < 0 {
		if s.resources > 0 {
			bytes = res * s.bytes / s.resources
		} else {
			bytes = s.bytes / int64(s.files)
		}
	}
	return res, bytes
}

// small says whether file i may share an activity: something is known of
// its size, and what is known is small.
func (p *batchPlanner) small(i int) (res, bytes int64, ok bool) {
	res, bytes = p.estimate(i)
	if res < 0 && bytes < 0 {
		return res, bytes, false
	}
	return max(res, 0), max(bytes, 0), res <= smallFileResources && bytes <= smallFileBytes
}

// next returns how many files, from file next, the next activity takes (1:
// a DownloadFile of its own). At most the remaining files divided by the
// window (but minBatch), so that the last activities of a chunk finish
// together and no slot idles behind one long batch (guided
// self-scheduling).
func (p *batchPlanner) next(next, end, window int) int {
	if p == nil {
		return 1
	}
	limit := min(maxBatch, max(minBatch, (end-next+window-1)/max(1, window)))
	n := 0
	var sumRes, sumBytes int64
	for i := next; i < end && n < limit; i++ {
		res, bytes, ok := p.small(i)
		if !ok || n > 0 && (sumRes+res > batchResources || sumBytes+bytes > batchBytes) {
			break
		}
		n++
		sumRes += res
		sumBytes += bytes
	}
	return max(1, n)
}

// batchSummary names a batch for the UI, e.g. "Observation files 1–40 of 300".
func batchSummary(groups []activities.Group, first, n int) string {
	for _, g := range groups {
		if first >= g.First && first+n <= g.First+g.Count {
			return fmt.Sprintf("%s files %d–%d of %d", groupName(g), first-g.First+1, first-g.First+n, g.Count)
		}
	}
	return fileSummary(groups, first) + " to " + fileSummary(groups, first+n-1)
}
