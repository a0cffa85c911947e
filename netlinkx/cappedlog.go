package netlinkx

import (
	"fmt"
	"log/slog"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// UserspaceLogEnv names the log file a userspace device process writes
// through a CappedLog (set by UserspaceStarter).
const UserspaceLogEnv = "MESHD_USERSPACE_LOG"

// MaxUserspaceLog is the size at which a userspace device's log is
// rotated: the log and one older file, at most twice this on disk.
const MaxUserspaceLog = 10 << 20

// CappedLog writes a log file that never grows past max bytes: a write
// that would pass it first renames the file to path.1 (replacing the one
// there) and starts a new one. The file is written through the descriptor
// fd, which each new file is duplicated onto, so that whatever else writes
// to fd (the Go runtime's panic output, when fd is 2) lands in the current
// file too.
type CappedLog struct {
	path string
	max  int64
	fd   int

	mu   sync.Mutex
	size int64
}

// OpenCappedLog points fd at the log at path (created 0600 if missing,
// appended to if not) and returns the writer.
func OpenCappedLog(path string, max int64, fd int) (*CappedLog, error) {
	// fd is written with write(2) directly: an *os.File of it would close
	// it when collected.
	l := &CappedLog{path: path, max: max, fd: fd}
	if err := l.reopen(os.O_APPEND); err != nil {
		return nil, err
	}
	return l, nil
}

// reopen opens path (with flag: O_APPEND or O_TRUNC) onto fd.
func (l *CappedLog) reopen(flag int) error {
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|flag, 0o600)
	if err != nil {
		return fmt.Errorf("open log %s: %w", l.path, err)
	}
	defer f.Close()
	if err := unix.Dup3(int(f.Fd()), l.fd, 0); err != nil {
		return fmt.Errorf("log %s onto descriptor %d: %w", l.path, l.fd, err)
	}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	l.size = st.Size()
	return nil
}

func (l *CappedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.size > 0 && l.size+int64(len(p)) > l.max {
		if err := os.Rename(l.path, l.path+".1"); err != nil {
			return 0, fmt.Errorf("rotate log %s: %w", l.path, err)
		}
		if err := l.reopen(os.O_TRUNC); err != nil {
			return 0, err
		}
	}
	if int64(len(p)) > l.max {
		p = p[:l.max] // one line larger than the whole log: its head
	}
	written := 0
	for written < len(p) {
		n, err := unix.Write(l.fd, p[written:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			l.size += int64(written)
			return written, fmt.Errorf("write log %s: %w", l.path, err)
		}
		written += n
	}
	l.size += int64(written)
	return written, nil
}

// UserspaceLogger is the logger of a userspace device process: to the log
// UserspaceStarter named, capped (CappedLog, its standard error moved onto
// it), or to standard error when it named none or it cannot be opened.
func UserspaceLogger() *slog.Logger {
	if path := os.Getenv(UserspaceLogEnv); path != "" {
		if l, err := OpenCappedLog(path, MaxUserspaceLog, 2); err == nil {
			return slog.New(slog.NewTextHandler(l, nil))
		}
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}
