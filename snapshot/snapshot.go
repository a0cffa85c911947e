package snapshot

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/internal/atomicfile"
	"meshd.dev/meshd/peers"
)

// FileName is the snapshot's name inside state_dir.
const FileName = "catalog.json"

// Version is the file format version.
const Version = 1

// maxSize bounds what Decode reads and what Save writes: far above any
// real fleet (10,000 entries are about 4 MB), far below what could exhaust
// memory. (A variable so that tests can reach it with a small file.)
var maxSize = 256 << 20

// ErrTooLarge is returned for a file larger than any real snapshot.
var ErrTooLarge = errors.New("snapshot is larger than 256 MiB")

type file struct {
	Version int       `json:"version"`
	SavedAt time.Time `json:"saved_at"`
	Index   uint64    `json:"index"`
	// Revocations come before entries: encode writes the head with
	// json.Marshal and the entries one by one after it.
	Revocations [][]byte `json:"revocations,omitempty"`
	Entries     []entry  `json:"entries"`
}

type entry struct {
	ServiceID   string            `json:"service_id"`
	Meta        map[string]string `json:"meta"`
	Tags        []string          `json:"tags,omitempty"`
	CreateIndex uint64            `json:"create_index"`
	ModifyIndex uint64            `json:"modify_index,omitempty"`
	Health      string            `json:"health,omitempty"`
}

// toFile is e as the file holds it: a withdrawal the delta path brought is
// not kept (after a restart the entry waits for the whole list).
func toFile(e peers.Entry) entry {
	return entry{ServiceID: e.ServiceID, Meta: e.Meta, Tags: e.Tags, CreateIndex: e.CreateIndex, ModifyIndex: e.ModifyIndex, Health: e.Health}
}

// Saved is a snapshot read back from disk.
type Saved struct {
	catalogsync.Snapshot
	SavedAt time.Time
}

// Encode renders s as the file's bytes.
func Encode(s catalogsync.Snapshot, savedAt time.Time) ([]byte, error) {
	var b bytes.Buffer
	err := encode(&b, s, savedAt)
	return b.Bytes(), err
}

// encode writes the file's JSON an entry at a time: the file struct's
// fields, with entries written one by one instead of marshalled as a
// whole.
func encode(w io.Writer, s catalogsync.Snapshot, savedAt time.Time) error {
	return (*Encoder)(nil).encode(w, s, savedAt)
}

// Encoder writes snapshots, reusing one buffer for the entries' JSON.
// Use one Encoder from one goroutine; the zero value is ready.
type Encoder struct {
	buf []byte
}

// Save is the package's Save through the encoder.
func (enc *Encoder) Save(path string, s catalogsync.Snapshot, savedAt time.Time) error {
	return atomicfile.Write(path, 0o600, func(w io.Writer) error {
		if err := enc.encode(&limitWriter{w: w, left: maxSize}, s, savedAt); err != nil {
			return fmt.Errorf("encode snapshot: %w", err)
		}
		return nil
	})
}

func (enc *Encoder) encode(w io.Writer, s catalogsync.Snapshot, savedAt time.Time) error {
	var buf []byte
	if enc != nil {
		buf = enc.buf[:0]
		defer func() { enc.buf = buf[:0] }()
	}
	head, err := json.Marshal(file{Version: Version, SavedAt: savedAt.UTC(), Index: s.Index, Revocations: s.Revocations, Entries: []entry{}})
	if err != nil {
		return err
	}
	// head ends in `"entries":[]}`: write up to the array's opening.
	open := bytes.LastIndexByte(head, '[')
	if _, err := w.Write(head[:open+1]); err != nil {
		return err
	}
	for i, e := range s.Entries {
		buf = buf[:0]
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendEntry(buf, e)
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
	_, err = w.Write([]byte("]}\n"))
	return err
}

// Save writes s to path atomically with mode 0600, streaming it to the
// file (with 10,000 entries it is megabytes). A snapshot larger than Load
// reads is not saved (ErrTooLarge): the file at path stays as it was, so a
// restart still finds the last one it can load.
func Save(path string, s catalogsync.Snapshot, savedAt time.Time) error {
	return (*Encoder)(nil).Save(path, s, savedAt)
}

// limitWriter fails with ErrTooLarge once more than left bytes are written.
type limitWriter struct {
	w    io.Writer
	left int
}

func (l *limitWriter) Write(b []byte) (int, error) {
	if l.left -= len(b); l.left < 0 {
		return 0, ErrTooLarge
	}
	return l.w.Write(b)
}

// Decode parses a snapshot file's bytes.
func Decode(b []byte) (Saved, error) {
	if len(b) > maxSize {
		return Saved{}, ErrTooLarge
	}
	var f file
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return Saved{}, fmt.Errorf("snapshot is not valid JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Saved{}, errors.New("snapshot has data after its JSON document")
	}
	if f.Version != Version {
		return Saved{}, fmt.Errorf("snapshot version %d, want %d", f.Version, Version)
	}
	s := Saved{SavedAt: f.SavedAt, Snapshot: catalogsync.Snapshot{Index: f.Index, Revocations: f.Revocations, Entries: make([]peers.Entry, 0, len(f.Entries))}}
	for i, e := range f.Entries {
		if e.ServiceID == "" {
			return Saved{}, fmt.Errorf("snapshot entry %d has no service_id", i)
		}
		s.Entries = append(s.Entries, peers.Entry{ServiceID: e.ServiceID, Meta: e.Meta, Tags: e.Tags,
			CreateIndex: e.CreateIndex, ModifyIndex: e.ModifyIndex, Health: e.Health})
	}
	return s, nil
}

// Load reads the snapshot at path.
func Load(path string) (Saved, error) {
	f, err := os.Open(path)
	if err != nil {
		return Saved{}, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(maxSize)+1))
	if err != nil {
		return Saved{}, fmt.Errorf("read snapshot: %w", err)
	}
	s, err := Decode(b)
	if err != nil {
		return Saved{}, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}
