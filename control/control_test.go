package control

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type fakeAgent struct {
	left     bool
	leaveErr error
}

func (f *fakeAgent) RotateKey(context.Context) error { return nil }

func (f *fakeAgent) ReleaseRemovals(context.Context) (int, error) { return 7, nil }

func (f *fakeAgent) StatusJSON() any { return map[string]any{"node": "h1", "left": f.left} }
func (f *fakeAgent) Leave(context.Context) error {
	f.left = true
	return f.leaveErr
}

func serve(t *testing.T, path string, h Handler) {
	t.Helper()
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, h) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

func TestStatusAndLeave(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "meshd.sock")
	a := &fakeAgent{}
	serve(t, path, a)

	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode().Perm(); perm&^0o660 != 0 {
		t.Errorf("socket mode %04o, want 0660 or stricter", perm)
	}
	var got map[string]any
	if err := Status(context.Background(), path, &got); err != nil {
		t.Fatal(err)
	}
	if got["node"] != "h1" {
		t.Errorf("status = %v", got)
	}
	if err := Leave(context.Background(), path); err != nil {
		t.Fatal(err)
	}
	if !a.left {
		t.Error("Leave did not reach the agent")
	}
	if n, err := ReleaseRemovals(context.Background(), path); err != nil || n != 7 {
		t.Errorf("ReleaseRemovals = %d, %v; want 7", n, err)
	}
	if err := RotateKey(context.Background(), path); err != nil {
		t.Errorf("RotateKey: %v", err)
	}
	a.leaveErr = errors.New("deregister failed: boom")
	if err := Leave(context.Background(), path); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("a failed leave returned %v, want the agent's error", err)
	}
}

func TestNotRunning(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshd.sock")
	if err := Leave(context.Background(), path); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Leave with no socket: %v, want ErrNotRunning", err)
	}
	// A stale file nobody listens on (left by a killed agent) is also
	// "not running", and Listen replaces it.
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Leave(context.Background(), path); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Leave with a stale socket: %v, want ErrNotRunning", err)
	}
	serve(t, path, &fakeAgent{})
}

func TestSecondAgentRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshd.sock")
	serve(t, path, &fakeAgent{})
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another meshd agent") {
		t.Errorf("second Listen: %v, want a refusal", err)
	}
}

// TestProfile: the agent's profiles come through the control socket, in
// pprof's (gzipped protobuf) format; an unknown one is an error.
func TestProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshd.sock")
	serve(t, path, &fakeAgent{})
	for _, name := range []string{"heap", "goroutine"} {
		b, err := Profile(context.Background(), path, name, 0)
		if err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
			t.Errorf("%s profile: %d bytes, %v; want gzip", name, len(b), err)
		}
	}
	if _, err := Profile(context.Background(), path, "nonsense", 0); err == nil {
		t.Error("an unknown profile was served")
	}
}
