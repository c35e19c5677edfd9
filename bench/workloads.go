package main

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// sample is one workload run on one system.
type sample struct {
	b      *bench
	root   string // the merged directory, or flat for native
	native bool
	target string // what rm_lower removes
}

func (s *sample) path(name string) string { return filepath.Join(s.root, name) }

// workload is one row of the table. prep runs untimed on the fresh mount;
// a warm workload runs once untimed first; then everything is synced, a
// cold workload drops the caches, and run is timed. run returns the bytes
// or operations done, for rate units. undo restores flat after a native
// sample (unions get a fresh upper anyway).
type workload struct {
	name, unit string
	cold, warm bool
	note       string // a workload that is not run, and why
	needs      string // "root" or "go": skipped without it
	prep       func(*sample) error
	run        func(*sample) (float64, error)
	undo       func(*sample) error
	// only names the one system the workload applies to ("" for all).
	only string
	// layered runs it on the deep/ stack instead of L1:L2.
	layered bool
	// readOnly mounts the lowers without an upper.
	readOnly bool
	// self marks a run that returns the measurement itself, in unit,
	// instead of the amount of work done.
	self bool
}

// shell runs a command in dir with LC_ALL=C, output into a pipe.
func (s *sample) shell(dir string, ok []int, name string, args ...string) error {
	env := []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C"}
	return runOK(s.b.ctx, dir, env, ok, name, args...)
}

func (b *bench) workloads() []*workload {
	var ws []*workload
	add := func(w *workload) { ws = append(ws, w) }

	add(&workload{name: "seqread_cold", unit: unitMBps, cold: true, run: seqRead})
	add(&workload{name: "seqread_warm", unit: unitMBps, warm: true, run: seqRead})
	add(&workload{name: "randread4k_cold", unit: unitIOPS, cold: true, run: randRead})
	add(&workload{name: "seqwrite_fsync", unit: unitMBps, run: seqWrite,
		undo: func(s *sample) error { return os.Remove(s.path("w.bin")) }})

	// Copy-up of the big lower file starts cold: the data comes from disk.
	appendByte := func(s *sample) error {
		f, err := os.OpenFile(s.path("big.bin"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		_, err = f.Write([]byte{'\n'})
		return errors.Join(err, f.Close())
	}
	chmod := func(s *sample) error { return os.Chmod(s.path("big.bin"), 0o600) }
	for _, c := range []struct {
		name string
		op   func(*sample) error
		undo func(*sample) error
	}{
		{"append", appendByte, func(s *sample) error { return os.Truncate(s.path("big.bin"), s.b.cfg.bigSize) }},
		{"chmod", chmod, func(s *sample) error { return os.Chmod(s.path("big.bin"), 0o644) }},
	} {
		add(&workload{name: "copyup_" + c.name, unit: unitSeconds, cold: true, undo: c.undo,
			run: func(s *sample) (float64, error) { return 0, c.op(s) }})
		add(&workload{name: "copyup_" + c.name + "_sync", unit: unitSeconds, cold: true, undo: c.undo,
			run: func(s *sample) (float64, error) {
				err := c.op(s)
				unix.Sync()
				return 0, err
			}})
	}

	// Tree walks, in tree/, cold and warm.
	walks := []struct {
		name string
		ok   []int
		cmd  []string
	}{
		{"find", nil, []string{"find", "."}},
		{"du", nil, []string{"du", "-s", "."}},
		{"lsR", nil, []string{"ls", "-lR", "."}},
		{"tar", nil, []string{"tar", "-cf", "-", "."}},
		{"grep", []int{1}, []string{"grep", "-r", "-e", "unionmount-bench: no line matches this", "."}},
	}
	for _, wk := range walks {
		for _, cold := range []bool{true, false} {
			name := wk.name + "_warm"
			if cold {
				name = wk.name + "_cold"
			}
			add(&workload{name: name, unit: unitSeconds, cold: cold, warm: !cold,
				run: func(s *sample) (float64, error) {
					return 0, s.shell(s.path("tree"), wk.ok, wk.cmd[0], wk.cmd[1:]...)
				}})
		}
	}

	// The same cold walks over the deep stack, where every directory is
	// merged across all its lowers.
	for _, wk := range []int{0, 2} {
		wk := walks[wk]
		add(&workload{name: wk.name + "_layers_cold", unit: unitSeconds, cold: true, layered: true,
			run: func(s *sample) (float64, error) {
				return 0, s.shell(s.path("tree"), wk.ok, wk.cmd[0], wk.cmd[1:]...)
			}})
	}

	// The same warm walks on a read-only union, as an image is inspected.
	for _, wk := range []int{3, 4} {
		wk := walks[wk]
		add(&workload{name: wk.name + "_ro_warm", unit: unitSeconds, warm: true, readOnly: true,
			run: func(s *sample) (float64, error) {
				return 0, s.shell(s.path("tree"), wk.ok, wk.cmd[0], wk.cmd[1:]...)
			}})
	}

	untar := func(s *sample) error {
		return s.shell(s.path("untar"), nil, "tar", "-xf", s.b.lay.tarball)
	}
	removeUntar := func(s *sample) error { return safeRemoveAll(s.path("untar")) }
	add(&workload{name: "untar", unit: unitSeconds,
		prep: func(s *sample) error { return os.Mkdir(s.path("untar"), 0o755) },
		run:  func(s *sample) (float64, error) { return 0, untar(s) },
		undo: removeUntar})
	add(&workload{name: "rm_upper", unit: unitSeconds,
		prep: func(s *sample) error {
			if err := os.Mkdir(s.path("untar"), 0o755); err != nil {
				return err
			}
			return untar(s)
		},
		run:  func(s *sample) (float64, error) { return 0, s.shell(s.root, nil, "rm", "-rf", "untar") },
		undo: removeUntar})
	// rm_lower removes the lower tree, leaving whiteouts. The native floor
	// removes a hard-linked copy of flat/tree instead. Warm: the walk is
	// done once, so the row measures the removals.
	add(&workload{name: "rm_lower", unit: unitSeconds,
		prep: func(s *sample) error {
			s.target = "tree"
			if s.native {
				s.target = "tree.rm"
				if err := s.shell(s.root, nil, "cp", "-al", "tree", "tree.rm"); err != nil {
					return err
				}
			}
			return s.shell(s.root, nil, "find", s.target)
		},
		run:  func(s *sample) (float64, error) { return 0, s.shell(s.root, nil, "rm", "-rf", s.target) },
		undo: func(s *sample) error { return safeRemoveAll(s.path("tree.rm")) }})
	add(&workload{name: "gobuild_noop", unit: unitSeconds, warm: true, needs: "go",
		run: func(s *sample) (float64, error) {
			return 0, run(s.b.ctx, s.path("proj"), s.b.goEnv(s.path("gocache")), s.b.goBin, "build", "./...")
		}})
	add(&workload{name: "stat_many", unit: unitSeconds,
		run: func(s *sample) (float64, error) { return 0, s.shell(s.path("many"), nil, "find", ".", "-ls") }})

	// commit freezes an upper of the untarred tree (~16k entries) into a
	// layer while the mount runs: the whole command (the layer is hashed
	// after writers are released), and how long writers were held.
	untarUpper := func(s *sample) error {
		if err := os.Mkdir(s.path("untar"), 0o755); err != nil {
			return err
		}
		return untar(s)
	}
	add(&workload{name: "commit", unit: unitSeconds, only: sysUnion, prep: untarUpper,
		run: func(s *sample) (float64, error) { _, err := s.commit(); return 0, err }})
	add(&workload{name: "commit_held", unit: unitSeconds, only: sysUnion, self: true, prep: untarUpper,
		run: func(s *sample) (float64, error) { return s.commit() }})

	for _, w := range ws {
		if w.cold {
			w.needs = "root"
		}
	}
	return ws
}

// commit runs "unionmount commit" on the sample's mount and returns how
// long it held writers, in seconds, as it reports.
func (s *sample) commit() (float64, error) {
	cmd := exec.CommandContext(s.b.ctx, s.b.umBin, "commit", s.root)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("unionmount commit: %w: %s", err, stderr.String())
	}
	_, held, ok := strings.Cut(stderr.String(), "writers held ")
	if !ok {
		return 0, fmt.Errorf("unionmount commit did not say how long writers were held: %s", stderr.String())
	}
	d, err := time.ParseDuration(strings.TrimSpace(held))
	if err != nil {
		return 0, fmt.Errorf("unionmount commit: held %q: %w", held, err)
	}
	return d.Seconds(), nil
}

func workloadNames(ws []*workload) string {
	var names []string
	for _, w := range ws {
		names = append(names, w.name)
	}
	return strings.Join(names, ",")
}

// seqRead reads big.bin from start to end in 1 MiB reads.
func seqRead(s *sample) (float64, error) {
	f, err := os.Open(s.path("big.bin"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := io.CopyBuffer(discardWriter{}, onlyReader{f}, s.b.buf)
	if err == nil && n != s.b.cfg.bigSize {
		err = fmt.Errorf("read %d bytes of big.bin, want %d", n, s.b.cfg.bigSize)
	}
	return float64(n) / 1e6, err
}

// onlyReader and discardWriter hide WriterTo and ReaderFrom, so that
// io.CopyBuffer really reads through our buffer.
type onlyReader struct{ io.Reader }
type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// randRead does 4 KiB preads at aligned offsets from a fixed-seed stream,
// with POSIX_FADV_RANDOM as fio sets it.
func randRead(s *sample) (float64, error) {
	f, err := os.Open(s.path("big.bin"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM)
	rng := rand.New(rand.NewPCG(4, 2))
	blocks := s.b.cfg.bigSize / 4096
	buf := s.b.buf[:4096]
	for i := range s.b.cfg.randReads {
		if i%1024 == 0 && s.b.ctx.Err() != nil {
			return 0, s.b.ctx.Err()
		}
		off := rng.Int64N(blocks) * 4096
		if n, err := f.ReadAt(buf, off); err != nil || n != len(buf) {
			return 0, fmt.Errorf("pread at %d: %d bytes, %v", off, n, err)
		}
	}
	return float64(s.b.cfg.randReads), nil
}

// seqWrite writes bigSize bytes to a new w.bin in 1 MiB writes and fsyncs.
func seqWrite(s *sample) (float64, error) {
	f, err := os.OpenFile(s.path("w.bin"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, err
	}
	for left := s.b.cfg.bigSize; left > 0; {
		n := min(left, int64(len(s.b.wbuf)))
		if _, err := f.Write(s.b.wbuf[:n]); err != nil {
			f.Close()
			return 0, err
		}
		left -= n
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, err
	}
	return float64(s.b.cfg.bigSize) / 1e6, f.Close()
}
