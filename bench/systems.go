package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// daemon is a FUSE server we started in the foreground.
type daemon struct {
	cmd    *exec.Cmd
	exited chan error // receives cmd.Wait's result once
	done   bool
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// mounted is one system's view of the layers for one sample.
type mounted struct {
	root   string  // the directory the workloads use
	daemon *daemon // the FUSE server, or nil
	undo   func() error
}

// mountSystem mounts sys with a fresh upper and work directory under
// runs/SYSTEM, over L1:L2 or, when layered, over the lowers of deep/;
// readOnly mounts the lowers alone, without an upper. native uses the
// matching flat directory.
func (b *bench) mountSystem(sys string, layered, readOnly bool) (*mounted, error) {
	lowers, flat := b.lay.l1+":"+b.lay.l2, b.lay.flat
	if layered {
		lowers, flat = strings.Join(b.deepLowers(), ":"), b.deepFlat()
	}
	if sys == sysNative {
		return &mounted{root: flat, undo: func() error { return nil }}, nil
	}
	dir := filepath.Join(b.lay.runs, sys)
	if err := safeRemoveAll(dir); err != nil {
		return nil, err
	}
	upper, work, merged := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "merged")
	for _, d := range []string{upper, work, merged} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lowers, upper, work)
	umArgs := []string{"-f", "-w", work, lowers, upper, merged}
	if readOnly {
		opts = "lowerdir=" + lowers
		umArgs = []string{"-f", lowers, merged}
	}
	m := &mounted{root: merged}
	var err error
	switch sys {
	case sysKernel:
		err = unix.Mount("overlay", merged, "overlay", 0, opts)
		if err != nil {
			err = fmt.Errorf("mount overlay on %s: %w", merged, err)
		}
	case sysFuseOv:
		m.daemon, err = b.startDaemon(sys, merged, b.fuseOverlayfs, "-f", "-o", opts, merged)
	case sysUnion:
		m.daemon, err = b.startDaemon(sys, merged, b.umBin, umArgs...)
	default:
		err = fmt.Errorf("unknown system %q", sys)
	}
	if err != nil {
		return nil, errors.Join(err, safeRemoveAll(dir))
	}
	m.undo = b.cl.push("unmount "+merged, func() error {
		var err error
		if m.daemon != nil {
			err = stopDaemon(merged, m.daemon)
		} else {
			err = unmountDir(merged)
		}
		if err != nil {
			return err
		}
		return safeRemoveAll(dir)
	})
	return m, nil
}

// startDaemon starts a FUSE server that stays in the foreground, in its own
// process group, its output appended to logs/NAME.log, and waits until
// mountpoint is mounted.
func (b *bench) startDaemon(name, mountpoint, exe string, args ...string) (*daemon, error) {
	logPath := filepath.Join(b.lay.logs, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &daemon{cmd: cmd, exited: make(chan error, 1)}
	go func() { d.exited <- cmd.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for !isMounted(mountpoint) {
		select {
		case err := <-d.exited:
			d.done = true
			return nil, fmt.Errorf("%s exited before mounting (%v); see %s:\n%s", name, err, logPath, tail(logPath, 10))
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, errors.Join(fmt.Errorf("%s did not mount %s within 15 s", name, mountpoint), stopDaemon(mountpoint, d))
		}
	}
	return d, nil
}

// stopDaemon unmounts the daemon's mount point and waits for it to exit;
// one that is still running 10 s later is killed (it is our child).
func stopDaemon(mountpoint string, d *daemon) error {
	err := unmountDir(mountpoint)
	if d.done {
		return err
	}
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
		err = errors.Join(err, fmt.Errorf("pid %d did not exit after unmounting %s; killed it", d.pid(), mountpoint))
	}
	d.done = true
	return err
}

// unmountDir unmounts dir, retrying while it is busy, and detaches it
// lazily as a last resort. Not being mounted is success.
func unmountDir(dir string) error {
	if os.Geteuid() != 0 {
		if !isMounted(dir) {
			return nil
		}
		if err := exec.Command("fusermount3", "-u", dir).Run(); err == nil {
			return nil
		}
		return exec.Command("fusermount3", "-uz", dir).Run()
	}
	for range 50 {
		err := unix.Unmount(dir, 0)
		switch {
		case err == nil, err == unix.EINVAL && !isMounted(dir):
			return nil
		case err != unix.EBUSY:
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount %s: busy, and lazily: %w", dir, err)
	}
	return fmt.Errorf("unmount %s: busy for 5 s; detached it lazily", dir)
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	lines := strings.Split(strings.TrimRight(readFile(path), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
