package mount

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// daemonEnv names the file descriptor on which a daemon reports to the
// command that started it: "ok" once the mount is live, or the error.
const daemonEnv = "_UNIONMOUNT_DAEMON_FD"

// reportOK is the daemon's message for a live mount.
const reportOK = "ok"

// Run validates o, mounts it and serves it until it is unmounted. In the
// foreground it logs the mount to stderr and serves in this process.
// Otherwise it starts a daemon that runs the same command line, and returns
// once the mount is live (nil) or failed (the daemon's error).
func Run(o *Options) error {
	if report := daemonReport(); report != nil {
		return runDaemon(o, report)
	}
	if err := o.resolveImage(); err != nil {
		return err
	}
	if err := o.Validate(); err != nil {
		return err
	}
	if !o.Foreground {
		return startDaemon()
	}
	u, err := Mount(o)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "unionmount: mounted %s\n", o.describe())
	return u.Serve()
}

// describe says what is mounted where, for the foreground log.
func (o *Options) describe() string {
	s := fmt.Sprintf("%s on %s", JoinLowers(o.Lowers), o.Mountpoint)
	if o.Upper == "" {
		return s + " (read-only)"
	}
	return fmt.Sprintf("%s (upper %s, workdir %s)", s, o.Upper, o.Work)
}

// startDaemon re-executes this command line in a new session, detached
// from the caller's terminal and stdio, so that a caller reading our
// output through a pipe sees EOF when we exit. It waits for the daemon's
// report. The child validates again and mounts; running the same command
// line makes it parse exactly what this process parsed. Until it reports,
// the child's stderr comes to us too, because that is where fusermount3
// explains its failures.
func startDaemon() error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	report, reportW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	defer report.Close()
	stderr, stderrW, err := os.Pipe()
	if err != nil {
		reportW.Close()
		return fmt.Errorf("start daemon: %w", err)
	}
	defer stderr.Close()
	cmd := exec.Command(exe, os.Args[1:]...)
	// Stdin and Stdout stay nil: /dev/null.
	cmd.Stderr = stderrW
	cmd.Env = append(os.Environ(), daemonEnv+"=3")
	cmd.ExtraFiles = []*os.File{reportW} // fd 3
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// Descriptors we inherited without close-on-exec (a caller's pipe,
	// say) would otherwise live on in the daemon and keep that caller
	// waiting for EOF as long as the mount lives.
	_ = unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC) // best effort: an old kernel keeps them
	err = cmd.Start()
	// Only the child may hold the write ends, so that our reads end
	// when it is done with them.
	reportW.Close()
	stderrW.Close()
	if err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	diag := make(chan []string, 1)
	go func() { diag <- lastLines(stderr) }()
	msg, err := io.ReadAll(report)
	if err != nil {
		return fmt.Errorf("read daemon report: %w", err)
	}
	lines := <-diag
	switch report := strings.TrimSpace(string(msg)); report {
	case reportOK:
		for _, l := range lines {
			fmt.Fprintln(os.Stderr, l)
		}
		// The daemon lives on; init reaps it.
		_ = cmd.Process.Release()
		return nil
	case "":
		err := cmd.Wait()
		if len(lines) > 0 {
			return fmt.Errorf("daemon exited before mounting (%v): %s", err, lines[len(lines)-1])
		}
		return fmt.Errorf("daemon exited before mounting (%v)", err)
	default:
		_ = cmd.Wait() // it exits right after reporting
		if len(lines) > 0 {
			return fmt.Errorf("%s (%s)", report, strings.Join(lines, "; "))
		}
		return errors.New(report)
	}
}

// lastLines reads r to EOF and returns its last few non-empty lines.
func lastLines(r io.Reader) []string {
	const keep = 5
	var lines []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
			if len(lines) > keep {
				lines = lines[1:]
			}
		}
	}
	_, _ = io.Copy(io.Discard, r) // after an overlong line
	return lines
}

// daemonReport returns the pipe to report on when this process is a
// daemon started by startDaemon, and nil otherwise.
func daemonReport() *os.File {
	v, ok := os.LookupEnv(daemonEnv)
	if !ok {
		return nil
	}
	os.Unsetenv(daemonEnv) // not for fusermount3 or anything else we run
	if v != "3" {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(3, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		return nil // not started by startDaemon
	}
	return os.NewFile(3, "daemon-report")
}

// runDaemon is Run in the daemon: it reports the outcome of validating and
// mounting on report, then serves until unmounted.
func runDaemon(o *Options, report *os.File) error {
	u, err := validateAndMount(o)
	msg := reportOK
	if err != nil {
		msg = err.Error()
	}
	_, werr := io.WriteString(report, msg+"\n")
	report.Close()
	detachStderr(o.Log)
	if err != nil {
		return err
	}
	if werr != nil {
		// Nobody learns that the mount is live; take it down again.
		_ = u.server.Unmount()
		_ = u.Wait()
		return fmt.Errorf("report to parent: %w", werr)
	}
	// Keep no directory busy: the paths in o are absolute.
	_ = os.Chdir("/")
	return u.Serve()
}

// detachStderr points stderr at the log file, or at /dev/null: the command
// that started the daemon has returned, and nobody reads the pipe any more.
func detachStderr(logFile string) {
	f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if logFile != "" {
		if lf, lerr := os.OpenFile(logFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); lerr == nil {
			f.Close()
			f, err = lf, nil
		}
	}
	if err != nil {
		return // keep the pipe; writes to it fail harmlessly
	}
	_ = unix.Dup3(int(f.Fd()), 2, 0)
	f.Close()
}

func validateAndMount(o *Options) (*Union, error) {
	if err := o.resolveImage(); err != nil {
		return nil, err
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	return Mount(o)
}
