package loop

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"meshd.dev/meshd/internal/leakcheck"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCoalesce: marks made while a reconcile runs make one more reconcile,
// not one each.
func TestCoalesce(t *testing.T) {
	var runs atomic.Int32
	release := make(chan struct{})
	l := &Loop{Reconcile: func(context.Context) (time.Time, error) {
		if runs.Add(1) == 1 {
			<-release
		}
		return time.Time{}, nil
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	eventually(t, "the first reconcile", func() bool { return runs.Load() == 1 })
	for range 100 {
		l.Mark()
	}
	close(release)
	eventually(t, "the second reconcile", func() bool { return runs.Load() == 2 })
	time.Sleep(50 * time.Millisecond)
	if n := runs.Load(); n != 2 {
		t.Errorf("%d reconciles for 100 marks during one, want 2 in all", n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v after cancel, want nil", err)
	}
}

// TestDo: a function run through Do runs on the loop, between reconciles;
// one that returns an error ends Run with it.
func TestDo(t *testing.T) {
	var inReconcile, overlapped atomic.Bool
	var runs atomic.Int32
	l := &Loop{Reconcile: func(context.Context) (time.Time, error) {
		inReconcile.Store(true)
		defer inReconcile.Store(false)
		runs.Add(1)
		time.Sleep(time.Millisecond)
		return time.Time{}, nil
	}}
	done := make(chan error)
	go func() { done <- l.Run(context.Background()) }()
	ran := 0
	for range 20 {
		l.Mark()
		if err := l.Do(context.Background(), func(context.Context) error {
			overlapped.Store(overlapped.Load() || inReconcile.Load())
			ran++
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if ran != 20 || overlapped.Load() {
		t.Errorf("Do ran %d of 20 times, overlapping a reconcile: %v", ran, overlapped.Load())
	}
	stop := errors.New("left")
	if err := l.Do(context.Background(), func(context.Context) error { return stop }); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, stop) {
		t.Errorf("Run = %v, want the error Do's function returned", err)
	}
	// No loop runs now: Do gives up with its context.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := l.Do(ctx, func(context.Context) error { return nil }); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Do without a loop = %v", err)
	}
}

// TestRetryAndDeadline: a failed reconcile runs again by itself (backoff),
// and so does one whose deadline comes, with no mark; a resync runs
// OnResync and reconciles.
func TestRetryAndDeadline(t *testing.T) {
	var runs, resyncs atomic.Int32
	l := &Loop{
		MinBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond,
		Resync: 30 * time.Millisecond, OnResync: func() { resyncs.Add(1) },
		Reconcile: func(context.Context) (time.Time, error) {
			switch n := runs.Add(1); {
			case n <= 3:
				return time.Time{}, errors.New("failed")
			case n == 4:
				return time.Now().Add(5 * time.Millisecond), nil
			}
			return time.Time{}, nil
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	eventually(t, "three retries and a deadline", func() bool { return runs.Load() >= 5 })
	eventually(t, "a resync", func() bool { return resyncs.Load() >= 1 && runs.Load() >= 6 })
	cancel()
	<-done
}

func TestBackoff(t *testing.T) {
	lo, hi := 250*time.Millisecond, 30*time.Second
	for n, ceil := range map[int]time.Duration{1: lo, 2: 2 * lo, 3: 4 * lo, 6: 32 * lo, 8: hi, 20: hi} {
		for range 200 {
			if d := Backoff(n, lo, hi); d < lo || d > ceil {
				t.Fatalf("Backoff(%d) = %s, want %s to %s", n, d, lo, ceil)
			}
		}
	}
	seen := map[time.Duration]bool{}
	for range 50 {
		seen[Backoff(10, lo, hi)] = true
	}
	if len(seen) < 10 {
		t.Errorf("Backoff gave %d distinct waits in 50: no jitter", len(seen))
	}
}

func TestEarliest(t *testing.T) {
	a, b := time.Unix(10, 0), time.Unix(20, 0)
	for _, tt := range []struct {
		in   []time.Time
		want time.Time
	}{{nil, time.Time{}}, {[]time.Time{{}, b, a}, a}, {[]time.Time{b, {}}, b}} {
		if got := Earliest(tt.in...); !got.Equal(tt.want) {
			t.Errorf("Earliest(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// TestResyncDelay: the resync (OnResync and its reconcile) comes
// ResyncDelay after the tick, not before, however often it ticks.
func TestResyncDelay(t *testing.T) {
	const delay = 150 * time.Millisecond
	start := time.Now()
	var ticked atomic.Int64 // UnixNano of the first OnResync
	var after atomic.Int64  // UnixNano of the first reconcile after it
	l := &Loop{
		Resync: 20 * time.Millisecond, ResyncDelay: delay,
		OnResync: func() { ticked.CompareAndSwap(0, time.Now().UnixNano()) },
		Reconcile: func(context.Context) (time.Time, error) {
			if ticked.Load() != 0 {
				after.CompareAndSwap(0, time.Now().UnixNano())
			}
			return time.Time{}, nil
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	eventually(t, "a reconcile after a resync tick", func() bool { return after.Load() != 0 })
	cancel()
	<-done
	if d := time.Unix(0, ticked.Load()).Sub(start); d < 20*time.Millisecond+delay {
		t.Errorf("the first resync came %s after the start, want at least the first tick (20ms) + %s", d, delay)
	}
	if after.Load() < ticked.Load() {
		t.Error("no reconcile after the resync")
	}
}
