package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNotRunning means no agent answers on the socket.
var ErrNotRunning = errors.New("no meshd agent is running")

// Handler is what the server serves.
type Handler interface {
	// StatusJSON returns the status document.
	StatusJSON() any
	// Leave makes the node leave the mesh; it returns once it has.
	Leave(ctx context.Context) error
	// ReleaseRemovals lets removals held by the circuit breaker proceed and
	// returns how many peers it released.
	ReleaseRemovals(ctx context.Context) (int, error)
	// RotateKey makes the agent take the key now in its key file.
	RotateKey(ctx context.Context) error
}

// Listen creates the socket at path, replacing a stale one that nobody
// answers on, and refusing if another agent does.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create status socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another meshd agent is running on %s", path)
	}
	os.Remove(path)
	// Create the socket with no group/other bits beyond 0660 from the start.
	old := syscall.Umask(0o117)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on status socket: %w", err)
	}
	return l, nil
}

// Serve serves h on l until ctx is done.
func Serve(ctx context.Context, l net.Listener, h Handler) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(h.StatusJSON())
	})
	mux.HandleFunc("POST /v1/leave", func(w http.ResponseWriter, r *http.Request) {
		if err := h.Leave(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "left\n")
	})
	mux.HandleFunc("POST /v1/release-removals", func(w http.ResponseWriter, r *http.Request) {
		n, err := h.ReleaseRemovals(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "%d\n", n)
	})
	mux.HandleFunc("POST /v1/rotate-key", func(w http.ResponseWriter, r *http.Request) {
		if err := h.RotateKey(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "rotated\n")
	})
	// Go's profiler, for operators chasing CPU or memory: here, behind the
	// socket only root (and the socket's group) may open, never on the
	// metrics listener (its profiles and goroutine dumps would be anyone's
	// who can reach Prometheus's port).
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	err := srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func client(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

func do(ctx context.Context, path, method, route string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://meshd"+route, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client(path).Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w (nothing answers on %s)", ErrNotRunning, path)
		}
		return nil, fmt.Errorf("ask the agent on %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read the agent's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("agent on %s: %s", path, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// Status fetches the running agent's status document into v.
func Status(ctx context.Context, path string, v any) error {
	body, err := do(ctx, path, http.MethodGet, "/v1/status")
	if err != nil {
		return err
	}
	return json.Unmarshal(body, v)
}

// Leave asks the running agent to leave the mesh.
func Leave(ctx context.Context, path string) error {
	_, err := do(ctx, path, http.MethodPost, "/v1/leave")
	return err
}

// ReleaseRemovals asks the running agent to release held removals and
// returns how many peers it released.
func ReleaseRemovals(ctx context.Context, path string) (int, error) {
	body, err := do(ctx, path, http.MethodPost, "/v1/release-removals")
	if err != nil {
		return 0, err
	}
	var n int
	if _, err := fmt.Sscan(string(body), &n); err != nil {
		return 0, fmt.Errorf("agent answered %q: %w", body, err)
	}
	return n, nil
}

// RotateKey asks the running agent to take the key now in its key file.
func RotateKey(ctx context.Context, path string) error {
	_, err := do(ctx, path, http.MethodPost, "/v1/rotate-key")
	return err
}

// Profile fetches one of the running agent's Go profiles (heap, goroutine,
// allocs, block, mutex, threadcreate, or profile: CPU for seconds) in
// pprof's format.
func Profile(ctx context.Context, path, name string, seconds int) ([]byte, error) {
	route := "/debug/pprof/" + url.PathEscape(name)
	if seconds > 0 {
		route += "?seconds=" + strconv.Itoa(seconds)
	}
	return do(ctx, path, http.MethodGet, route)
}
