package integration

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// This file sets up the two sides of a differential test: the same layers
// built twice, one copy mounted by kernel overlayfs (the reference) and one
// by unionmount (or, with -diff.peer=kernel, by the kernel again, which
// validates the harness: two kernel mounts must agree perfectly).

var diffPeer = flag.String("diff.peer", "union",
	`what the differential tests compare with kernel overlayfs: "union" (unionmount) or "kernel" (a second kernel mount, to validate the tests)`)

var diffTrace = flag.Bool("diff.trace", false, "log every differential op with its result")

var diffOpts = flag.String("diff.opts", "",
	`more -o options for the unionmount side of the differential tests (e.g. "passthrough=on" or "timeout=0"), to compare a configuration other than the default`)

// side is one union: its layer directories and mount point.
type side struct {
	name   string // kernel, unionmount or kernel2
	impl   string // kernel or union
	lowers []string
	upper  string
	work   string
	merged string
	// kernelOpts replaces defaultKernelOpts for a kernel side.
	kernelOpts string
}

// newSide builds stack under dir (which must not exist) for impl.
func newSide(t testing.TB, dir, name, impl string, stack stackSpec) *side {
	t.Helper()
	s := &side{name: name, impl: impl,
		upper: filepath.Join(dir, "upper"), work: filepath.Join(dir, "work"), merged: filepath.Join(dir, "merged")}
	for i := range stack.lowers {
		s.lowers = append(s.lowers, filepath.Join(dir, fmt.Sprintf("lower%d", i)))
	}
	for _, d := range append([]string{dir, s.upper, s.work, s.merged}, s.lowers...) {
		if err := os.MkdirAll(d, 0755); err != nil {
			t.Fatal(err)
		}
	}
	for i, l := range stack.lowers {
		buildLayer(t, s.lowers[i], l)
	}
	buildLayer(t, s.upper, stack.upper)
	return s
}

// mountOpts is the -o option string for both the kernel and unionmount.
func (s *side) mountOpts() string {
	return fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(s.lowers, ":"), s.upper, s.work)
}

// opensWithoutDaemon reports whether -diff.opts leaves the unionmount side
// opening files without the daemon (fs/noopen.go), as it does by default
// as root: not with passthrough=on, nor with timeout=0.
func opensWithoutDaemon() bool {
	for _, o := range strings.Split(*diffOpts, ",") {
		k, v, _ := strings.Cut(o, "=")
		if k == "passthrough" && v == "on" {
			return false
		}
		if f, err := strconv.ParseFloat(v, 64); k == "timeout" && err == nil && f == 0 {
			return false
		}
	}
	return true
}

func (s *side) mount(t testing.TB) {
	t.Helper()
	opts := s.mountOpts()
	switch {
	case s.impl == "kernel":
		opts += s.kernelOpts
	case *diffOpts != "":
		opts += "," + *diffOpts
	}
	mountStack(t, s.impl, opts, s.merged)
}

func (s *side) unmount(t testing.TB) {
	t.Helper()
	unmount(t, s.merged)
}

// hangLimit is how long an op may take before the test gives up on the
// union: it is not a timing assertion, only a way to fail with a name
// instead of hanging until the test binary's timeout.
const hangLimit = 30 * time.Second

// run runs o on s. If o does not return within hangLimit, the FUSE
// connection is aborted (so that the op and the mount come back) and the
// result says so.
func (s *side) run(o op) result {
	if s.impl == "kernel" {
		return o.run(s.merged)
	}
	done := make(chan result, 1)
	go func() { done <- o.run(s.merged) }()
	select {
	case r := <-done:
		return r
	case <-time.After(hangLimit):
	}
	abortFUSE(s.merged)
	r := <-done
	r.out = fmt.Sprintf("HUNG for %v (FUSE connection aborted; then %v)", hangLimit, r)
	r.errno = unix.EDEADLK
	return r
}

// abortFUSE aborts the FUSE connection mounted at mnt, found by its device
// number in mountinfo (a stat would hang too).
func abortFUSE(mnt string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMountinfo(f[4]) == mnt {
			_, minor, _ := strings.Cut(f[2], ":")
			os.WriteFile("/sys/fs/fuse/connections/"+minor+"/abort", []byte("1"), 0)
		}
	}
}

// defaultKernelOpts pins the kernel features that change the on-disk
// format, so that module defaults cannot change what the tests expect.
const defaultKernelOpts = ",index=off,redirect_dir=off,metacopy=off"

// withKernelIndex makes newPair mount its kernel sides with index=on.
func withKernelIndex(p *pair) {
	p.ref.kernelOpts = ",index=on,redirect_dir=off,metacopy=off"
	p.peer.kernelOpts = p.ref.kernelOpts
}

// mountStack mounts opts at mnt with impl ("kernel" or "union") and
// unmounts in t.Cleanup. A kernel mount gets defaultKernelOpts unless opts
// sets index= itself.
func mountStack(t testing.TB, impl, opts, mnt string) {
	t.Helper()
	switch impl {
	case "kernel":
		if !strings.Contains(opts, "index=") {
			opts += defaultKernelOpts
		}
		if err := unix.Mount("overlay", mnt, "overlay", 0, opts); err != nil {
			t.Fatalf("mount -t overlay -o %s %s: %v", opts, mnt, err)
		}
		t.Cleanup(func() { unmount(t, mnt) })
	case "union":
		mountUnion(t, "-o", opts, mnt)
	default:
		t.Fatalf("unknown implementation %q", impl)
	}
}

// pair is the reference kernel side and the side under test.
type pair struct {
	ref, peer *side
}

// newPair builds stack twice in a fresh temporary directory and mounts both
// copies.
func newPair(t testing.TB, stack stackSpec, opts ...func(*pair)) *pair {
	t.Helper()
	needRoot(t)
	peerImpl := *diffPeer
	peerName := "unionmount"
	switch peerImpl {
	case "union":
		needFUSE(t)
	case "kernel":
		peerName = "kernel2"
	default:
		t.Fatalf("-diff.peer=%q: want union or kernel", peerImpl)
	}
	base := t.TempDir()
	p := &pair{
		ref:  newSide(t, filepath.Join(base, "k"), "kernel", "kernel", stack),
		peer: newSide(t, filepath.Join(base, "u"), peerName, peerImpl, stack),
	}
	for _, o := range opts {
		o(p)
	}
	p.ref.mount(t)
	p.peer.mount(t)
	return p
}

// do runs o on both sides and reports a differing result.
func (p *pair) do(t testing.TB, i int, o op) (want, got result) {
	t.Helper()
	want = p.ref.run(o)
	got = p.peer.run(o)
	if *diffTrace {
		t.Logf("op %d %s: %v", i, o, want)
	}
	if got != want {
		t.Errorf("op %d %s: got %v, want %v (kernel)", i, o, got, want)
	}
	return want, got
}

// snap snapshots both sides.
func (p *pair) snap(t testing.TB, mode snapMode, refDir, peerDir string) (want, got snapshot) {
	t.Helper()
	var err error
	if want, err = takeSnapshot(refDir, mode); err != nil {
		t.Fatalf("kernel snapshot: %v", err)
	}
	if got, err = takeSnapshot(peerDir, mode); err != nil {
		t.Fatalf("%s snapshot: %v", p.peer.name, err)
	}
	return want, got
}

func (p *pair) snapMerged(t testing.TB) (want, got snapshot) {
	t.Helper()
	return p.snap(t, snapMerged, p.ref.merged, p.peer.merged)
}

func (p *pair) snapUpper(t testing.TB) (want, got snapshot) {
	t.Helper()
	return p.snap(t, snapRaw, p.ref.upper, p.peer.upper)
}

func (p *pair) unmount(t testing.TB) {
	t.Helper()
	p.ref.unmount(t)
	p.peer.unmount(t)
}

func (p *pair) mount(t testing.TB) {
	t.Helper()
	p.ref.mount(t)
	p.peer.mount(t)
}

// maxDiffLines caps how many lines of one comparison a test reports.
const maxDiffLines = 30

// reportDiffs reports diffs (minus those in skip) under a heading and
// returns how many it found.
func reportDiffs(t testing.TB, heading string, diffs []string, skip map[string]bool) int {
	t.Helper()
	var keep []string
	for _, d := range diffs {
		if !skip[d] {
			keep = append(keep, d)
		}
	}
	if len(keep) == 0 {
		return 0
	}
	n := len(keep)
	more := ""
	if len(keep) > maxDiffLines {
		more = fmt.Sprintf("\n  ... and %d more", len(keep)-maxDiffLines)
		keep = keep[:maxDiffLines]
	}
	t.Errorf("%s: %d differences:\n  %s%s", heading, n, strings.Join(keep, "\n  "), more)
	return n
}

func setOf(diffs []string) map[string]bool {
	m := map[string]bool{}
	for _, d := range diffs {
		m[d] = true
	}
	return m
}
