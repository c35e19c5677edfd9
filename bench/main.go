// Command bench measures unionmount against kernel overlayfs, fuse-overlayfs
// and the plain filesystem underneath (the floor), on the workloads of
// issue 4, and prints a Markdown table of medians.
//
// Run it as root from the repository root:
//
//	go run ./bench -quick        # about a minute: 64 MiB file, ~2.3k-entry tree, 1 round
//	go run ./bench               # full: 1 GiB file, ~16.6k-entry tree, 3 rounds (15-25 min)
//	go run ./bench -rounds 5 -only find_warm,untar -systems kernel,unionmount
//	go run ./bench -root /mnt/scratch   # in a directory, no loop image
//
// It builds cmd/unionmount into the work directory (or takes -unionmount
// PATH) and installs nothing: fuse-overlayfs is measured when it is on PATH
// (apt-get install fuse-overlayfs), kernel overlayfs when running as root.
//
// # Storage
//
// By default everything lives under -dir (/var/tmp/unionmount-bench): a
// sparse ext4 image attached with "losetup --direct-io=on" and mounted
// without discard, because a root filesystem mounted with discard makes
// deletes slow and noisy. -root DIR uses DIR/unionmount-bench instead,
// without a loop device. On exit, error or Ctrl-C everything is unmounted,
// the loop device is detached and the files are removed; -keep keeps the
// image (or directory), and the next run with the same settings reuses its
// fixture. Nothing is written outside the work directory.
//
// # Fixture
//
// Two lowers: L2 holds big.bin (1 GiB of ChaCha8 data from a fixed seed),
// tree/ (a copy of $GOROOT/src and $GOROOT/test, about 16.6k entries, all
// times set to 2025-01-01), proj/ (a generated Go module without
// dependencies) and gocache/ (its warm build cache, made with -trimpath). L1
// holds its own copy of tree/src/net, which shadows L2's, so walks merge
// directories across layers. tree.tar is the tree, for untar. The native
// floor is flat/, a plain copy of L1 over L2.
//
// The *_layers rows walk a deeper stack instead, as a container image
// gives: deep/ holds 8 lowers (4 with -quick), the bottom one a copy of
// L2's tree and each of the others every directory of it with one file
// of its own, so that every directory is merged across all of them; its
// native floor is deep/flat.
//
// # Systems
//
//	native           flat/, no mount; copy-up rows are in-place operations
//	kernel           mount -t overlay -o lowerdir=L1:L2,upperdir=U,workdir=W
//	fuse-overlayfs   fuse-overlayfs -f -o lowerdir=L1:L2,upperdir=U,workdir=W
//	unionmount       unionmount -f -w W L1:L2 U
//
// Every sample mounts afresh on an empty upper and unmounts afterwards; the
// FUSE daemons run in the foreground as our children, so their CPU time
// (utime+stime from /proc/PID/stat, over the timed part only) and peak RSS
// (VmHWM) are reported.
//
// # Method
//
// Each round runs every workload on every system, the systems' order
// rotated from round to round. A sample: mount; untimed preparation; for a
// warm workload one untimed run; sync; for a cold one drop the caches
// ("echo 3 > /proc/sys/vm/drop_caches"); the timed run. The table gives the
// median and, with more than one round, the min and max. um/kernel and
// um/fuse-ovl are slowdowns from the medians: above 1, unionmount is slower
// (for rates, the other system's rate divided by unionmount's). Load on the
// machine inflates FUSE numbers more than the kernel's, so the header gives
// the load average over the run.
//
// # Workloads
//
//	seqread_cold, seqread_warm   read big.bin in 1 MiB reads (MB/s)
//	randread4k_cold              4 KiB preads at random aligned offsets, fixed seed (IOPS)
//	seqwrite_fsync               write a new file of big.bin's size, then fsync (MB/s)
//	copyup_append[_sync]         append a byte to big.bin (then sync(2)), cold
//	copyup_chmod[_sync]          chmod big.bin (then sync(2)), cold
//	find, du, lsR, tar, grep     find .; du -s .; ls -lR .; tar -cf - . into a pipe;
//	  (_cold and _warm)          grep -r for a string that is not there; all in tree/
//	untar                        tar -xf tree.tar into a new directory
//	rm_upper                     rm -rf of that untarred tree
//	rm_lower                     rm -rf tree/, every entry a lower one (whiteouts)
//	gobuild_noop                 go build ./... in proj/ with GOCACHE=gocache/, offline
//	tar_ro_warm, grep_ro_warm    the warm tar and grep on a read-only union of L1:L2 (no upper)
//	commit                       unionmount commit of the untarred tree (~16k entries in the upper)
//	commit_held                  how long that commit held writers, as it reports
//	stat_many                    find many/ -ls: every entry of a 100k-entry tree (10k with -quick)
//	                             looked up and stat'ed; its RSS column is the daemon's memory
//	                             for a tree that size
//
// # Flags
//
//	-quick          64 MiB file, tree of src/crypto, src/go and src/net, 1 round
//	-rounds N       rounds (default 3, 1 with -quick)
//	-only W,...     run only these workloads
//	-systems S,...  run only these systems (native,kernel,fuse-overlayfs,unionmount)
//	-dir DIR        work directory for the loop image (default /var/tmp/unionmount-bench)
//	-root DIR       use DIR/unionmount-bench on DIR's filesystem instead of a loop image
//	-keep           keep the image or directory, and with it the fixture
//	-unionmount P   use this binary instead of building cmd/unionmount
//	-size MiB       size of big.bin, -reads N number of random reads
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

type config struct {
	dir, root  string
	quick      bool
	rounds     int
	only       []string
	systems    []string
	keep       bool
	unionmount string

	bigSize   int64
	randReads int
	treeDirs  []string // under $GOROOT
	shadow    string   // the subtree of tree/ that L1 also holds
	projPkgs  int
	many      int // entries of many/, the tree for the memory row
	layers    int // lowers of the layered stack (deep/)
}

// bench is one run of the benchmark.
type bench struct {
	cfg config
	ctx context.Context
	cl  cleanups
	lay layout

	loopDev    string
	detachLoop func() error

	goBin, goroot, goVersion string
	umBin, fuseOverlayfs     string
	isRoot                   bool
	buf, wbuf                []byte // read buffer; write data
}

var allSystems = []string{sysNative, sysKernel, sysFuseOv, sysUnion}

func parseFlags(args []string) (config, error) {
	var c config
	fl := flag.NewFlagSet("bench", flag.ContinueOnError)
	fl.StringVar(&c.dir, "dir", "/var/tmp/unionmount-bench", "work directory holding the loop image")
	fl.StringVar(&c.root, "root", "", "use `DIR`/unionmount-bench instead of a loop image")
	fl.BoolVar(&c.quick, "quick", false, "small fixture, 1 round: about a minute")
	fl.IntVar(&c.rounds, "rounds", 0, "interleaved rounds (default 3, 1 with -quick)")
	only := fl.String("only", "", "comma-separated workloads to run (default all)")
	systems := fl.String("systems", strings.Join(allSystems, ","), "comma-separated systems to run")
	fl.BoolVar(&c.keep, "keep", false, "keep the work directory and fixture for the next run")
	fl.StringVar(&c.unionmount, "unionmount", "", "unionmount binary to use (default: build ./cmd/unionmount)")
	size := fl.Int64("size", 0, "size of big.bin in MiB (default 1024, 64 with -quick)")
	fl.IntVar(&c.randReads, "reads", 0, "number of random 4k reads (default 30000, 3000 with -quick)")
	fl.Usage = func() {
		fmt.Fprintln(fl.Output(), "usage: go run ./bench [flags]   (as root; see go doc ./bench)")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		return c, err
	}
	if fl.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fl.Args())
	}
	c.bigSize, c.shadow = 1<<30, "src/net"
	c.treeDirs, c.projPkgs, c.many, c.layers = []string{"src", "test"}, 40, 100_000, 8
	if c.quick {
		c.bigSize = 64 << 20
		c.treeDirs, c.projPkgs, c.many, c.layers = []string{"src/crypto", "src/go", "src/net"}, 8, 10_000, 4
		c.rounds = cmpOr(c.rounds, 1)
		c.randReads = cmpOr(c.randReads, 3000)
	}
	c.rounds = cmpOr(c.rounds, 3)
	c.randReads = cmpOr(c.randReads, 30000)
	if *size > 0 {
		c.bigSize = *size << 20
	}
	if *only != "" {
		c.only = strings.Split(*only, ",")
	}
	for _, s := range strings.Split(*systems, ",") {
		if s == "overlay" || s == "overlayfs" {
			s = sysKernel
		}
		if !slices.Contains(allSystems, s) {
			return c, fmt.Errorf("unknown system %q (want some of %s)", s, strings.Join(allSystems, ","))
		}
		if !slices.Contains(c.systems, s) {
			c.systems = append(c.systems, s)
		}
	}
	return c, nil
}

func cmpOr(v, def int) int {
	if v != 0 {
		return v
	}
	return def
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if err := runBench(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func runBench(cfg config) (err error) {
	// Signals cancel the context, and stay caught until cleanup is done:
	// a second Ctrl-C does not cut it short.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	b := &bench{cfg: cfg, ctx: ctx, isRoot: os.Geteuid() == 0}
	defer func() {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "bench: interrupted; cleaning up")
		}
		if cerr := b.cl.runAll(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
		if cfg.keep && b.lay.base != "" {
			fmt.Fprintf(os.Stderr, "bench: kept %s\n", b.lay.base)
		}
	}()
	return b.main(os.Stdout)
}

func (b *bench) main(out io.Writer) error {
	ws, err := b.selectWorkloads()
	if err != nil {
		return err
	}
	if !b.isRoot && b.cfg.root == "" {
		return errors.New("the loop image needs root; run as root or give -root DIR")
	}
	skipped := b.findTools()
	if len(b.cfg.systems) == 0 {
		return errors.New("no system to measure")
	}
	if err := b.setupStorage(); err != nil {
		return err
	}
	if err := b.prepareFixture(); err != nil {
		return err
	}
	if slices.ContainsFunc(ws, func(w *workload) bool { return w.layered }) {
		if err := b.prepareDeep(); err != nil {
			return err
		}
	}
	if slices.Contains(b.cfg.systems, sysUnion) {
		if err := b.buildUnionmount(); err != nil {
			return err
		}
	}
	b.buf = make([]byte, 1<<20)
	b.wbuf = make([]byte, 1<<20)
	var key [32]byte
	key[0] = 2
	_, _ = rand.NewChaCha8(key).Read(b.wbuf)

	header := b.header(skipped)
	start := time.Now()
	loadStart := loadavg()
	var loads []float64
	rows := make([]*row, len(ws))
	var runnable []*workload
	for i, w := range ws {
		rows[i] = &row{name: w.name, unit: w.unit, note: w.note}
		if w.note == "" && w.needs == "root" && !b.isRoot {
			rows[i].note = "skipped (cold needs root for drop_caches)"
		}
		if w.note == "" && w.needs == "go" && b.goBin == "" {
			rows[i].note = "skipped (no go command)"
		}
		if rows[i].note == "" {
			runnable = append(runnable, w)
		}
	}
	total := b.cfg.rounds * len(runnable) * len(b.cfg.systems)
	n := 0
	var runErr error
rounds:
	for r := range b.cfg.rounds {
		order := rotate(b.cfg.systems, r)
		for i, w := range ws {
			if !slices.Contains(runnable, w) {
				continue
			}
			for _, sys := range order {
				if w.only != "" && sys != w.only {
					continue
				}
				if b.ctx.Err() != nil {
					runErr = b.ctx.Err()
					break rounds
				}
				n++
				loads = append(loads, load1())
				res, err := b.sample(sys, w)
				c := rows[i].cell(sys)
				var fatal *fatalError
				switch {
				case errors.As(err, &fatal):
					runErr = err
					break rounds
				case err != nil && b.ctx.Err() != nil:
					runErr = b.ctx.Err()
					break rounds
				case err != nil:
					c.errs = append(c.errs, err.Error())
					fmt.Fprintf(os.Stderr, "[%d/%d] round %d %-18s %-15s error: %v\n", n, total, r+1, w.name, sys, err)
					continue
				}
				c.vals = append(c.vals, res.val)
				msg := fmt.Sprintf("%s %s", formatNum(res.val), w.unit)
				if res.daemon {
					c.cpu = append(c.cpu, res.cpu)
					c.rss = append(c.rss, res.rss)
					msg += fmt.Sprintf("  (daemon %.2f s CPU, %.0f MB peak RSS)", res.cpu, res.rss)
				}
				fmt.Fprintf(os.Stderr, "[%d/%d] round %d %-18s %-15s %s\n", n, total, r+1, w.name, sys, msg)
			}
		}
	}

	fmt.Fprintln(out)
	fmt.Fprint(out, header)
	fmt.Fprintf(out, "- load average (1/5/15 min): %s at start, %s at end; 1-min load over the samples: median %.2f, range %.2f–%.2f\n",
		loadStart, loadavg(), median(loads), minOr0(loads), maxOr0(loads))
	fmt.Fprintf(out, "- %d samples in %s; cells are median (min–max) over %d round(s); um/X: slowdown of unionmount against X (>1: slower)\n",
		n, time.Since(start).Round(time.Second), b.cfg.rounds)
	if runErr != nil {
		fmt.Fprintf(out, "- INCOMPLETE: %v\n", runErr)
	}
	fmt.Fprintln(out)
	writeTable(out, b.cfg.systems, rows)
	for _, r := range rows {
		for _, sys := range b.cfg.systems {
			if c := r.cells[sys]; c != nil && len(c.errs) > 0 {
				fmt.Fprintf(out, "\n%s on %s: %d failed sample(s); first: %s\n", r.name, sys, len(c.errs), c.errs[0])
			}
		}
	}
	return runErr
}

func minOr0(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	return slices.Min(v)
}

func maxOr0(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	return slices.Max(v)
}

// rotate returns s rotated left by r.
func rotate(s []string, r int) []string {
	if len(s) == 0 {
		return nil
	}
	r %= len(s)
	return append(slices.Clone(s[r:]), s[:r]...)
}

func (b *bench) selectWorkloads() ([]*workload, error) {
	all := b.workloads()
	if len(b.cfg.only) == 0 {
		return all, nil
	}
	var ws []*workload
	for _, name := range b.cfg.only {
		i := slices.IndexFunc(all, func(w *workload) bool { return w.name == name })
		if i < 0 {
			return nil, fmt.Errorf("unknown workload %q; workloads: %s", name, workloadNames(all))
		}
		ws = append(ws, all[i])
	}
	return ws, nil
}

// findTools locates go, fuse-overlayfs and /dev/fuse, drops the systems
// that cannot run and says why.
func (b *bench) findTools() []string {
	var skipped []string
	if p, err := exec.LookPath("go"); err == nil {
		b.goBin = p
	} else if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		b.goBin = p
	}
	if b.goBin != "" {
		b.goroot, _ = output(b.ctx, b.goBin, "env", "GOROOT")
		b.goVersion, _ = output(b.ctx, b.goBin, "env", "GOVERSION")
	}
	keep := b.cfg.systems[:0]
	for _, s := range b.cfg.systems {
		why := ""
		switch s {
		case sysKernel:
			if !b.isRoot {
				why = "needs root"
			}
		case sysFuseOv:
			if p, err := exec.LookPath("fuse-overlayfs"); err == nil {
				b.fuseOverlayfs = p
			} else {
				why = "not installed (apt-get install fuse-overlayfs)"
			}
		case sysUnion:
			if b.cfg.unionmount == "" && b.goBin == "" {
				why = "no go command to build it, and no -unionmount"
			}
		}
		if (s == sysFuseOv || s == sysUnion) && why == "" && !fileExists("/dev/fuse") {
			why = "no /dev/fuse"
		}
		if why != "" {
			skipped = append(skipped, fmt.Sprintf("%s: %s", s, why))
			continue
		}
		keep = append(keep, s)
	}
	b.cfg.systems = keep
	return skipped
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// buildUnionmount builds cmd/unionmount of the module we run in into
// base/bin, unless -unionmount names a binary.
func (b *bench) buildUnionmount() error {
	if b.cfg.unionmount != "" {
		p, err := filepath.Abs(b.cfg.unionmount)
		b.umBin = p
		return err
	}
	mod, err := moduleRoot()
	if err != nil {
		return err
	}
	b.umBin = filepath.Join(b.lay.bin, "unionmount")
	fmt.Fprintf(os.Stderr, "bench: building %s/cmd/unionmount\n", mod)
	cmd := command(b.ctx, mod, nil, b.goBin, "build", "-o", b.umBin, "./cmd/unionmount")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/unionmount: %w", err)
	}
	return nil
}

// moduleRoot finds the unionmount module from the working directory up.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if strings.Contains(readFile(filepath.Join(dir, "go.mod")), "module github.com/unionmount/unionmount\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the unionmount module; run from the repository or give -unionmount")
		}
		dir = parent
	}
}

// header describes the machine, the versions and the fixture.
func (b *bench) header(skipped []string) string {
	var s strings.Builder
	var u unix.Utsname
	_ = unix.Uname(&u)
	fmt.Fprintf(&s, "## unionmount benchmark, %s\n\n", time.Now().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&s, "- kernel %s, %d CPUs, %s RAM; %s\n", unix.ByteSliceToString(u.Release[:]), runtime.NumCPU(), memTotal(), b.goVersion)
	if up, err := output(b.ctx, "uptime"); err == nil {
		fmt.Fprintf(&s, "- uptime at start: %s\n", strings.TrimSpace(up))
	}
	var vers []string
	if b.umBin != "" {
		v := "unionmount " + b.cfg.unionmount
		if b.cfg.unionmount == "" {
			if mod, err := moduleRoot(); err == nil {
				desc, _ := output(b.ctx, "git", "-C", mod, "describe", "--always", "--dirty")
				v = "unionmount " + cmpOrStr(desc, "(no git)")
				if strings.HasSuffix(desc, "-dirty") {
					v += " (built from a working tree with uncommitted changes)"
				}
			}
		}
		vers = append(vers, v)
	}
	if b.fuseOverlayfs != "" {
		v, _ := exec.Command(b.fuseOverlayfs, "--version").CombinedOutput()
		for _, l := range strings.Split(string(v), "\n") {
			if strings.HasPrefix(l, "fuse-overlayfs: version") || strings.HasPrefix(l, "fusermount3 version") {
				vers = append(vers, strings.TrimSpace(l))
			}
		}
	}
	if len(vers) > 0 {
		fmt.Fprintf(&s, "- %s\n", strings.Join(vers, "; "))
	}
	if b.loopDev != "" {
		fmt.Fprintf(&s, "- storage: ext4 on %s (losetup --direct-io=on, no discard), image in %s\n", b.loopDev, b.lay.base)
	} else {
		fmt.Fprintf(&s, "- storage: directory %s (no loop device)\n", b.lay.base)
	}
	fmt.Fprintf(&s, "- fixture: tree/ of $GOROOT/{%s}, %d entries, L1 shadows tree/%s (%d entries); big.bin %d MiB; %d random reads; go module of %d packages; many/ of %d entries\n",
		strings.Join(b.cfg.treeDirs, ","), countEntries(filepath.Join(b.lay.l2, "tree")), b.cfg.shadow,
		countEntries(filepath.Join(b.lay.l1, "tree", b.cfg.shadow)), b.cfg.bigSize>>20, b.cfg.randReads, b.cfg.projPkgs,
		countEntries(filepath.Join(b.lay.l2, "many")))
	fmt.Fprintf(&s, "- systems: %s", strings.Join(b.cfg.systems, ", "))
	if len(skipped) > 0 {
		fmt.Fprintf(&s, " (skipped: %s)", strings.Join(skipped, "; "))
	}
	fmt.Fprintln(&s)
	return s.String()
}

func cmpOrStr(v, def string) string {
	if v != "" {
		return v
	}
	return def
}

func memTotal() string {
	for _, l := range strings.Split(readFile("/proc/meminfo"), "\n") {
		if rest, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(rest), "%f", &kb)
			return fmt.Sprintf("%.0f GiB", kb/(1<<20))
		}
	}
	return "?"
}

// fatalError stops the run: the machine is no longer in a known state
// (something could not be unmounted).
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }

// result is one sample's measurements.
type result struct {
	val      float64 // in the workload's unit
	daemon   bool    // cpu and rss are set
	cpu, rss float64
}

// sample runs workload w once on sys, on a fresh mount.
func (b *bench) sample(sys string, w *workload) (res result, err error) {
	m, err := b.mountSystem(sys, w.layered, w.readOnly)
	if err != nil {
		return res, err
	}
	defer func() {
		if uerr := m.undo(); uerr != nil {
			err = &fatalError{errors.Join(err, uerr)}
		}
	}()
	s := &sample{b: b, root: m.root, native: sys == sysNative}
	if s.native && w.undo != nil {
		defer func() {
			if uerr := w.undo(s); uerr != nil && !errors.Is(uerr, os.ErrNotExist) {
				err = &fatalError{errors.Join(err, fmt.Errorf("restoring flat/ after %s: %w", w.name, uerr))}
			}
		}()
	}
	if w.prep != nil {
		if err := w.prep(s); err != nil {
			return res, fmt.Errorf("prepare: %w", err)
		}
	}
	if w.warm {
		if _, err := w.run(s); err != nil {
			return res, fmt.Errorf("warm-up: %w", err)
		}
	}
	unix.Sync()
	if w.cold {
		if err := dropCaches(); err != nil {
			return res, err
		}
	}
	var cpu0 float64
	if m.daemon != nil {
		if cpu0, err = procCPU(m.daemon.pid()); err != nil {
			return res, err
		}
	}
	t0 := time.Now()
	amount, err := w.run(s)
	elapsed := time.Since(t0).Seconds()
	if err != nil {
		return res, err
	}
	if m.daemon != nil {
		cpu1, err1 := procCPU(m.daemon.pid())
		rss, err2 := procHWM(m.daemon.pid())
		if err := errors.Join(err1, err2); err != nil {
			return res, err
		}
		res.daemon, res.cpu, res.rss = true, cpu1-cpu0, rss
	}
	res.val = elapsed
	if w.self {
		res.val = amount
	} else if higherIsBetter(w.unit) {
		res.val = amount / elapsed
	}
	return res, nil
}
