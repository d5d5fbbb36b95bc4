package activities

// sortIDHashes orders ents by hash, in place: an MSD radix sort on the
// hash's bytes (American flag sort), insertion sort for small buckets. The
// order among equal hashes is left open: check reads each run of equal
// hashes as a group. It replaced slices.SortFunc, whose comparator call per
// comparison made the sort 5% of a download's CPU (issue 14 §2;
// BenchmarkIDSetCheck: 4-5x faster on 10,000 ids). No extra
// memory, and at most 8 levels however the hashes fall (a hostile file of
// one id repeated is one bucket at every level, then done).
func sortIDHashes(ents []idEnt) { radixIDHashes(ents, 56) }

func radixIDHashes(e []idEnt, shift int) {
	if len(e) <= 64 {
		for i := 1; i < len(e); i++ {
			for j := i; j > 0 && e[j].h < e[j-1].h; j-- {
				e[j], e[j-1] = e[j-1], e[j]
			}
		}
		return
	}
	var start, next [257]int
	for _, x := range e {
		start[int(byte(x.h>>shift))+1]++
	}
	for b := 1; b <= 256; b++ {
		start[b] += start[b-1]
	}
	copy(next[:], start[:])
	for b := range 256 {
		for next[b] < start[b+1] {
			x := e[next[b]]
			d := byte(x.h >> shift)
			for int(d) != b {
				e[next[d]], x = x, e[next[d]]
				next[d]++
				d = byte(x.h >> shift)
			}
			e[next[b]] = x
			next[b]++
		}
	}
	if shift == 0 {
		return // each bucket holds one hash
	}
	for b := range 256 {
		if start[b+1]-start[b] > 1 {
			radixIDHashes(e[start[b]:start[b+1]], shift-8)
		}
	}
}
