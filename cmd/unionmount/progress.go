package main

import (
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Long work (commit, load, save, import, export) reports progress on
// stderr when stderr is a terminal, redrawing one line at most ten times a
// second, and stays quiet otherwise (a pipe, a log file, a test).

var (
	progressMu    sync.Mutex
	progressLast  time.Time
	progressShown bool
)

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progress returns a callback that shows what has been done so far under
// label, or nil when stderr is not a terminal.
func progress(label string) func(entries int, bytes int64) {
	if !isTerminal(os.Stderr) {
		return nil
	}
	return func(entries int, bytes int64) {
		showProgress(func() string { return fmt.Sprintf("%s: %d entries, %s", label, entries, humanSize(bytes)) })
	}
}

// showProgress redraws the progress line with what line returns, unless
// it was drawn less than 100 ms ago.
func showProgress(line func() string) {
	progressMu.Lock()
	defer progressMu.Unlock()
	if time.Since(progressLast) < 100*time.Millisecond {
		return
	}
	progressLast = time.Now()
	progressShown = true
	fmt.Fprintf(os.Stderr, "\r\033[K%s", line())
}

// endProgress clears the progress line, if one is shown.
func endProgress() {
	progressMu.Lock()
	defer progressMu.Unlock()
	if progressShown {
		fmt.Fprint(os.Stderr, "\r\033[K")
		progressShown = false
	}
}
