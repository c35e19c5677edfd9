package integration

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

var (
	diffSeed = flag.Int64("diff.seed", 0, "run TestDiffRandom with this seed only (0: the default seeds)")
	diffOps  = flag.Int("diff.ops", 600, "operations per TestDiffRandom sequence")
	// Shrinking replays the sequence many times; it only runs on failure.
	diffShrink = flag.Int("diff.shrink", 150, "at most this many replays to shrink a failing TestDiffRandom sequence (0: off)")
)

// defaultSeeds are the sequences TestDiffRandom runs without -diff.seed.
var defaultSeeds = []int64{1, 2, 3, 4}

// checkEvery is how many random ops run between two tree comparisons.
const checkEvery = 50

// TestDiffRandom runs seeded random operation sequences over a small
// namespace, so that operations collide. A failure names its seed and is
// replayed with
//
//	go test ./integration -run TestDiffRandom -diff.seed=N
//
// and, unless -diff.shrink=0, shrunk to a shorter sequence that still fails.
func TestDiffRandom(t *testing.T) {
	seeds := defaultSeeds
	if *diffSeed != 0 {
		seeds = []int64{*diffSeed}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			ops := randomOps(seed, *diffOps)
			fail := runSequence(t, ops, checkEvery)
			if fail == "" {
				return
			}
			t.Errorf("seed %d (-diff.seed=%d): %s", seed, seed, fail)
			if *diffShrink > 0 {
				small, sfail := shrinkOps(t, ops, *diffShrink)
				t.Errorf("shrunk to %d ops, failing with: %s\n%s", len(small), sfail, opsString(small))
			}
		})
	}
}

// Random namespace: names that the fixture has, in several layers, and
// new names, used as files in one op and as directories in another. The
// lower hard links hl1 and hl2 are left out: unionmount keeps them linked
// across copy-up like the kernel's index=on (see TestDiffHardlinks).
var (
	randFiles = []string{
		"lower.txt", "ro.txt", "zero.txt", "suid", "empty.txt", "fifo", "link", "dirlink", "dangling",
		"shadow.txt", "shadow2.txt", "hidden", "upw.txt", "mid.txt", "up.txt", "midlink",
		"d/f", "d/g", "d/h", "d/mid", "d/sub/s1", "d/sub/s2", "opq/above", "opq/below", "opq/both",
		"wdir/x", "gone/x", "both/l", "both/u", "updir/x", "mdir/m", "rmme/a", "full/keep",
		"n1", "n2", "d/n1", "opq/n1", "updir/n1", "hidden/n1", "n1/n2", "n1/f", "d/sub/n1", "wdir/n2",
	}
	randDirs = []string{
		"", "d", "d/sub", "d/sub/deep", "opq", "updir", "updir/y", "both", "wdir", "gone", "hidden",
		"mdir", "empty", "full", "rmme", "n1", "n2", "d/n1", "n1/n2",
	}
	randXattrs = []string{"user.a", "user.b", "user.color", "trusted.c"}
	randModes  = []uint32{0600, 0644, 0755, 0700, 0444, 0000, 04755}
)

// randomOps generates n ops from seed. The sequence depends on nothing
// but the seed, so a failing sequence can be replayed and shrunk.
func randomOps(seed int64, n int) []op {
	r := rand.New(rand.NewPCG(uint64(seed), 0x756e696f6e))
	any := func() string {
		if r.IntN(3) == 0 {
			return randDirs[r.IntN(len(randDirs))]
		}
		return randFiles[r.IntN(len(randFiles))]
	}
	file := func() string { return randFiles[r.IntN(len(randFiles))] }
	dir := func() string {
		d := randDirs[r.IntN(len(randDirs))]
		if d == "" {
			return "n1"
		}
		return d
	}
	data := func() string {
		b := make([]byte, 1+r.IntN(6))
		for i := range b {
			b[i] = byte('A' + r.IntN(26))
		}
		return string(b)
	}
	type gen struct {
		weight int
		make   func() op
	}
	gens := []gen{
		{8, func() op { return opWrite(file(), int64(r.IntN(24)), data()) }},
		{4, func() op { return opAppend(file(), data()) }},
		{4, func() op { return opOpenWrite(file(), int64(r.IntN(8)), data()) }},
		{7, func() op { return opCreate(file(), data()) }},
		{2, func() op { return opTruncWrite(file(), data()) }},
		{3, func() op { return opTruncate(file(), int64(r.IntN(30))) }},
		{4, func() op { return opRead(file()) }},
		{1, func() op { return op{kind: "staleread", path: file(), off: int64(r.IntN(8)), data: data()} }},
		{8, func() op { return opUnlink(any()) }},
		{5, func() op { return opRmdir(any()) }},
		{7, func() op { return opMkdir(dir(), 0755) }},
		{9, func() op {
			fl := 0
			switch r.IntN(6) {
			case 0:
				fl = noreplace
			case 1:
				fl = exchange
			}
			return opRename(any(), any(), fl)
		}},
		{3, func() op { return opLink(file(), file()) }},
		{3, func() op { return opSymlink(file(), file()) }},
		{1, func() op { return opMkfifo(file(), 0644) }},
		{3, func() op { return opChmod(any(), randModes[r.IntN(len(randModes))]) }},
		{2, func() op { return opChown(any(), 1000+r.IntN(2), 1000+r.IntN(2)) }},
		{1, func() op { return opLchown(any(), 2000, 2000) }},
		{2, func() op {
			return opUtimes(any(), []int{utExplicit, utOmitAtime, utNoFollow}[r.IntN(3)], int64(r.IntN(1000)))
		}},
		{3, func() op {
			return opSetxattr(any(), randXattrs[r.IntN(len(randXattrs))], data(), []int{0, 0, unix.XATTR_CREATE, unix.XATTR_REPLACE}[r.IntN(4)])
		}},
		{2, func() op { return opRemovexattr(any(), randXattrs[r.IntN(len(randXattrs))]) }},
		{1, func() op { return opGetxattr(any(), randXattrs[r.IntN(len(randXattrs))]) }},
		{1, func() op { return opListxattr(any()) }},
		{3, func() op { return opReaddir(dir()) }},
		{2, func() op { return opStat(any()) }},
	}
	total := 0
	for _, g := range gens {
		total += g.weight
	}
	ops := make([]op, 0, n)
	for len(ops) < n {
		k := r.IntN(total)
		for _, g := range gens {
			if k < g.weight {
				ops = append(ops, g.make())
				break
			}
			k -= g.weight
		}
	}
	return ops
}

// runSequence runs ops on a fresh pair built from defaultStack and returns
// a description of the first difference, or "" when there is none. It
// compares each op's result, the merged trees every `every` ops and at the
// end, the uppers left behind, and the merged trees after a remount.
//
// A rename of a directory that the kernel refuses with EXDEV (it has lower
// layers and redirect_dir is off) is unionmount's deliberate extension:
// when unionmount performs it, the kernel side is brought level by copying
// in userspace, and from then on inode numbers and uppers are no longer
// comparable, so only merged trees are.
func runSequence(t testing.TB, ops []op, every int) string {
	p := newPair(t, defaultStack)
	k0, u0 := p.snapMerged(t)
	static := setOf(diffSnapshots(u0, k0, "kernel", cmpOpts{ino: true}))
	diverged := false
	firstDiff := func(diffs []string) string {
		for _, d := range diffs {
			if !static[d] {
				return d
			}
		}
		return ""
	}
	treeCheck := func(when string) string {
		k, u := p.snapMerged(t)
		if d := firstDiff(diffSnapshots(u, k, "kernel", cmpOpts{ino: !diverged, noNlink: diverged})); d != "" {
			return fmt.Sprintf("merged tree %s: %s", when, d)
		}
		return ""
	}
	for i, o := range ops {
		want := p.ref.run(o)
		got := p.peer.run(o)
		if *diffTrace {
			t.Logf("op %d %s: %v", i, o, want)
		}
		if got != want {
			if want.errno == unix.EXDEV && o.kind == "rename" && isDir(filepath.Join(p.ref.merged, o.path), filepath.Join(p.ref.merged, o.path2)) {
				if got.errno != 0 {
					continue // unionmount refused it too, for its own reason
				}
				if hasHardLinks(filepath.Join(p.ref.merged, o.path), filepath.Join(p.ref.merged, o.path2)) {
					// cp -a cannot keep links to names outside the
					// tree it copies: the sides can no longer agree.
					t.Logf("op %d %s: stopping the comparison: the renamed tree has hard links", i, o)
					return ""
				}
				if err := userspaceRename(p.ref.merged, o.path, o.path2, o.flags); err != nil {
					return fmt.Sprintf("op %d %s: re-doing it on the kernel side in userspace: %v", i, o, err)
				}
				diverged = true
				continue
			}
			return fmt.Sprintf("op %d %s: got %v, want %v (kernel)", i, o, got, want)
		}
		if every > 0 && (i+1)%every == 0 {
			if d := treeCheck(fmt.Sprintf("after op %d", i)); d != "" {
				return d
			}
		}
	}
	if d := treeCheck("at the end"); d != "" {
		return d
	}
	p.unmount(t)
	if !diverged {
		ku, uu := p.snapUpper(t)
		if d := firstDiff(diffSnapshots(uu, ku, "kernel", cmpOpts{ino: true})); d != "" {
			return "upper left behind: " + d
		}
	}
	p.mount(t)
	return treeCheck("after remount")
}

// isDir reports whether any of paths is a directory (without following
// symlinks): the op renamed or exchanged a directory.
func isDir(paths ...string) bool {
	for _, p := range paths {
		var st unix.Stat_t
		if unix.Lstat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return true
		}
	}
	return false
}

// hasHardLinks reports whether a tree under any of roots holds a
// non-directory with more than one name.
func hasHardLinks(roots ...string) bool {
	found := false
	for _, r := range roots {
		filepath.WalkDir(r, func(p string, d os.DirEntry, err error) error {
			var st unix.Stat_t
			if err == nil && unix.Lstat(p, &st) == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink > 1 {
				found = true
			}
			return nil
		})
	}
	return found
}

// userspaceRename does rename(src, dst, flags) under root with cp -a and
// rm -rf, as mv does across filesystems, for a rename the kernel refused
// with EXDEV.
func userspaceRename(root, src, dst string, flags int) error {
	s, d := filepath.Join(root, src), filepath.Join(root, dst)
	sh := func(args ...string) error {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	move := func(from, to string) error {
		if err := sh("rm", "-rf", to); err != nil {
			return err
		}
		if err := sh("cp", "-a", from, to); err != nil {
			return err
		}
		return sh("rm", "-rf", from)
	}
	if flags == unix.RENAME_EXCHANGE {
		tmp := filepath.Join(root, ".diff-exchange")
		if err := move(s, tmp); err != nil {
			return err
		}
		if err := move(d, s); err != nil {
			return err
		}
		return move(tmp, d)
	}
	return move(s, d)
}

// quietTB runs a replay without reporting to the test: failures are
// collected, Fatal ends only the replay, and cleanups run when it returns.
type quietTB struct {
	testing.TB
	msgs     []string
	cleanups []func()
}

type quietFatal struct{}

func (q *quietTB) Helper()                   {}
func (q *quietTB) Logf(string, ...any)       {}
func (q *quietTB) Log(...any)                {}
func (q *quietTB) Errorf(f string, a ...any) { q.msgs = append(q.msgs, fmt.Sprintf(f, a...)) }
func (q *quietTB) Error(a ...any)            { q.msgs = append(q.msgs, fmt.Sprint(a...)) }
func (q *quietTB) Fatalf(f string, a ...any) {
	q.Errorf(f, a...)
	panic(quietFatal{})
}
func (q *quietTB) Fatal(a ...any) {
	q.Error(a...)
	panic(quietFatal{})
}
func (q *quietTB) Skipf(f string, a ...any) { q.Fatalf("skip: "+f, a...) }
func (q *quietTB) Skip(a ...any)            { q.Fatal(a...) }
func (q *quietTB) Cleanup(f func())         { q.cleanups = append(q.cleanups, f) }
func (q *quietTB) TempDir() string {
	d, err := os.MkdirTemp("", "diffreplay")
	if err != nil {
		q.Fatal(err)
	}
	q.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// replay runs ops on a fresh pair, quietly, comparing merged trees every
// `every` ops (0: only at the end), and returns the first difference (""
// when none).
func replay(t testing.TB, ops []op, every int) (fail string) {
	q := &quietTB{TB: t}
	defer func() {
		for i := len(q.cleanups) - 1; i >= 0; i-- {
			q.cleanups[i]()
		}
	}()
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(quietFatal); !ok {
				panic(r)
			}
		}
		if fail == "" && len(q.msgs) > 0 {
			fail = q.msgs[0]
		}
	}()
	return runSequence(q, ops, every)
}

// shrinkOps looks for a shorter sequence that still fails by dropping
// chunks of ops, halving the chunk size down to single ops, within budget
// replays.
//
// Replays compare merged trees only at the end, unless the sequence fails
// only with the tree comparisons every checkEvery ops: taking a snapshot
// reads every file, which changes atimes, so some differences need them.
func shrinkOps(t testing.TB, ops []op, budget int) ([]op, string) {
	every := 0
	fail := replay(t, ops, every)
	if fail == "" {
		every = checkEvery
		budget--
		if fail = replay(t, ops, every); fail == "" {
			return ops, "(does not fail when replayed)"
		}
	}
	// A failure at op i needs nothing after it.
	var idx int
	if _, err := fmt.Sscanf(fail, "op %d ", &idx); err == nil && idx+1 < len(ops) {
		if f := replay(t, ops[:idx+1], every); f != "" {
			ops, fail = ops[:idx+1], f
		}
		budget--
	}
	for chunk := len(ops) / 2; chunk >= 1 && budget > 0; chunk /= 2 {
		for start := 0; start < len(ops) && budget > 0; {
			cand := append(append([]op(nil), ops[:start]...), ops[min(start+chunk, len(ops)):]...)
			budget--
			if f := replay(t, cand, every); f != "" {
				ops, fail = cand, f
				continue
			}
			start += chunk
		}
	}
	if every > 0 {
		fail += fmt.Sprintf(" (replayed with merged trees compared every %d ops)", every)
	}
	return ops, fail
}
