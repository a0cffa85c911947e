package gateway

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"meshd.dev/meshd/internal/atomicfile"
)

// savedRecords is the file at Options.SavedPath: the gateway's records as
// last read from Consul. A gateway restarted while Consul is down applies
// them, so that a user whose record expired or was removed before the
// restart does not keep access until Consul answers.
type savedRecords struct {
	Version int       `json:"version"`
	SavedAt time.Time `json:"saved_at"`
	Pairs   []Pair    `json:"pairs"`
}

// maxSaved bounds what loadSaved reads: 100,000 records are about 40 MB.
const maxSaved = 256 << 20

// saveRecords writes the file through a buffer (100,000 records are tens
// of megabytes: not marshalled in memory first).
func saveRecords(path string, pairs []Pair, now time.Time) error {
	return atomicfile.Write(path, 0o600, func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 1<<16)
		if err := json.NewEncoder(bw).Encode(savedRecords{Version: 1, SavedAt: now.UTC(), Pairs: pairs}); err != nil {
			return err
		}
		return bw.Flush()
	})
}

// loadSaved reads the saved records; a missing file is (nil, nil).
func loadSaved(path string) ([]Pair, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var s savedRecords
	dec := json.NewDecoder(&limited{f, maxSaved})
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("saved gateway records %s: %w", path, err)
	}
	if s.Version != 1 {
		return nil, fmt.Errorf("saved gateway records %s: version %d, want 1", path, s.Version)
	}
	if s.Pairs == nil {
		s.Pairs = []Pair{}
	}
	return s.Pairs, nil
}

// limited fails a read past n bytes.
type limited struct {
	f *os.File
	n int64
}

func (l *limited) Read(b []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("larger than any saved records")
	}
	if int64(len(b)) > l.n {
		b = b[:l.n]
	}
	n, err := l.f.Read(b)
	l.n -= int64(n)
	return n, err
}
