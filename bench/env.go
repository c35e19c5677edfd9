package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// cleanups is a stack of undo actions, run last-in first-out on exit,
// error or signal.
type cleanups struct {
	mu  sync.Mutex
	fns []*cleanup
}

type cleanup struct {
	name string
	fn   func() error
	done bool
}

// push registers fn and returns a function that runs it now (once) and
// drops it from the stack.
func (c *cleanups) push(name string, fn func() error) func() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := &cleanup{name: name, fn: fn}
	c.fns = append(c.fns, e)
	return func() error { return c.run(e) }
}

func (c *cleanups) run(e *cleanup) error {
	c.mu.Lock()
	if e.done {
		c.mu.Unlock()
		return nil
	}
	e.done = true
	c.mu.Unlock()
	if err := e.fn(); err != nil {
		return fmt.Errorf("%s: %w", e.name, err)
	}
	return nil
}

// runAll runs what is left, newest first, and returns every error.
func (c *cleanups) runAll() error {
	var errs []error
	for {
		c.mu.Lock()
		if len(c.fns) == 0 {
			c.mu.Unlock()
			return errors.Join(errs...)
		}
		e := c.fns[len(c.fns)-1]
		c.fns = c.fns[:len(c.fns)-1]
		c.mu.Unlock()
		if err := c.run(e); err != nil {
			errs = append(errs, err)
		}
	}
}

// command prepares name in its own process group, so a Ctrl-C on the
// terminal reaches only us; cancelling ctx kills that group (all of it is
// ours: tar and cat of a pipeline, say).
func command(ctx context.Context, dir string, env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs a command with its output discarded and returns an error that
// quotes its stderr.
func run(ctx context.Context, dir string, env []string, name string, args ...string) error {
	return runOK(ctx, dir, env, nil, name, args...)
}

// runOK is run that also accepts the exit codes in ok (grep's 1: no match).
func runOK(ctx context.Context, dir string, env []string, ok []int, name string, args ...string) error {
	cmd := command(ctx, dir, env, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	// A pipe, not /dev/null: GNU tar skips reading files it writes to
	// /dev/null, and grep stops at the first match.
	cmd.Stdout = discard{}
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		for _, c := range ok {
			if ee.ExitCode() == c {
				return nil
			}
		}
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 500 {
			msg = msg[:500] + "..."
		}
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return nil
}

// discard is io.Discard without its ReaderFrom, so os/exec gives the child
// a pipe.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// output runs a command and returns its trimmed stdout.
func output(ctx context.Context, name string, args ...string) (string, error) {
	cmd := command(ctx, "", nil, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// dropCaches writes back and drops the page, dentry and inode caches.
func dropCaches() error {
	unix.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
}

// mountPoints returns the mount points listed in /proc/self/mountinfo.
func mountPoints() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mps []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 {
			mps = append(mps, unescapeMountinfo(fields[4]))
		}
	}
	return mps, sc.Err()
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isMounted(dir string) bool {
	mps, err := mountPoints()
	if err != nil {
		return false
	}
	for _, m := range mps {
		if m == dir {
			return true
		}
	}
	return false
}

// mountsUnder returns the mount points at or below dir.
func mountsUnder(dir string) ([]string, error) {
	mps, err := mountPoints()
	if err != nil {
		return nil, err
	}
	var under []string
	for _, m := range mps {
		if m == dir || strings.HasPrefix(m, dir+"/") {
			under = append(under, m)
		}
	}
	return under, nil
}

// safeRemoveAll removes path, but refuses when anything is mounted at or
// below it: removing through a live union would delete its lowers.
func safeRemoveAll(path string) error {
	path = filepath.Clean(path)
	m, err := mountsUnder(path)
	if err != nil {
		return err
	}
	if len(m) > 0 {
		return fmt.Errorf("not removing %s: %s is mounted", path, m[0])
	}
	return os.RemoveAll(path)
}

// procCPU returns the user+system CPU seconds of process pid, all threads.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

// parseStatCPU reads utime and stime (fields 14 and 15, in USER_HZ ticks of
// 1/100 s) from a /proc/PID/stat line.
func parseStatCPU(stat string) (float64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("bad stat line %q", stat)
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("bad stat line %q", stat)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return float64(ut+st) / 100, nil
}

// procHWM returns the peak resident set size of pid in MB.
func procHWM(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				return 0, err
			}
			return kb * 1024 / 1e6, nil
		}
	}
	return 0, errors.New("no VmHWM")
}

// loadavg returns /proc/loadavg's first three fields.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// load1 returns the one-minute load average.
func load1() float64 {
	f := strings.Fields(loadavg())
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
