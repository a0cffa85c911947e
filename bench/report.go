package bench

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Systems, in the order tables show them.
const (
	Floor   = "floor"
	Meshd   = "meshd"
	Classic = "classic"
)

// Point is everything measured at one catalog size.
type Point struct {
	N int
	// Latency holds, per system, one convergence time per event: from the
	// write's acknowledgement until every kernel of that system has it
	// (for the floor: until the blocking query returns).
	Latency map[string][]time.Duration
	// MeshdByKind and FloorByKind are meshd's and the floor's latency by
	// kind of event.
	MeshdByKind, FloorByKind map[string][]time.Duration
	// Unconverged counts events a system had not applied within the
	// event timeout (its latency is then the timeout).
	Unconverged map[string]int
	// Reread counts events after which a system's device, read once its
	// packets showed the change, did not yet hold it in full (for a
	// rotation, the old key still there) and was read again.
	Reread map[string]int
	// Hints holds, per event, how long after the write's acknowledgement
	// every meshd host's agent had the hint key's new value.
	Hints []time.Duration
	// CPUPerEvent and PeakRSS are meshd's, per host (max over hosts).
	CPUPerEvent time.Duration
	PeakRSS     uint64
	// AgentCPUPerEvent is the host's Consul client agent's CPU over the
	// events, per event; HostCPUPerEvent meshd's and its agent's together
	// (max over hosts). Periodic reads within the window are included.
	AgentCPUPerEvent, HostCPUPerEvent time.Duration
	// HostCPUPerChange is meshd's and its agent's CPU over the events
	// minus that of an idle window as long (scaled), per event;
	// HostIdlePerMinute what the two cost idle, per minute (max over
	// hosts). EventsWindow and IdleWindow are the two windows.
	HostCPUPerChange, HostIdlePerMinute time.Duration
	EventsWindow, IdleWindow            time.Duration
	// CostRounds are the host's CPU per change over the pairs of windows
	// of -cost-rounds (IdleRounds their idle costs per minute).
	CostRounds, IdleRounds []time.Duration
	// FullReadCPU is what one read of the whole list, asked for as a gap
	// asks, cost a host (meshd and its agent; max over hosts).
	FullReadCPU time.Duration
	// FullReadAgentCPU is the agent's part of it (max over hosts).
	FullReadAgentCPU time.Duration
	// RxPerEvent is what each host received per event on its underlay
	// link, meshd hosts and the classic host.
	RxPerEvent map[string]float64
	// InitialSync is how long a fresh meshd host took to hold all N
	// peers; RoutePeriod is the median time between two looks at a route
	// within an event (the packets' resolution is probeInterval).
	InitialSync time.Duration
	// InitialFloor is the floor for it, timed right after: the first read
	// of the whole list through a fresh agent, plus one bare
	// ConfigureDevice of the same peers on the same device.
	InitialFloor, FloorListRead, FloorConfigure time.Duration
	// WarmListRead is a second list read through the fresh host's agent,
	// after meshd's: not part of the floor (an agent's first read is).
	WarmListRead time.Duration
	RoutePeriod  time.Duration
}

// Quantile is the q-quantile (nearest rank) of ds.
func Quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000) }

func ratio(a, b time.Duration) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", float64(a)/float64(b))
}

// WriteTables writes one markdown table per point.
func WriteTables(w io.Writer, points []Point) {
	for _, p := range points {
		fmt.Fprintf(w, "### N = %d simulated nodes\n\n", p.N)
		fmt.Fprintln(w, "| system | events | p50 ms | p99 ms | max ms | not converged | device read again |")
		fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- |")
		for _, s := range []string{Floor, Meshd, Classic} {
			l := p.Latency[s]
			if len(l) == 0 {
				continue
			}
			reread := "-"
			if s != Floor {
				reread = fmt.Sprint(p.Reread[s])
			}
			fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %d | %s |\n", s, len(l), ms(Quantile(l, 0.5)), ms(Quantile(l, 0.99)), ms(slices.Max(l)), p.Unconverged[s], reread)
		}
		var kinds []string
		for _, k := range []string{"join", "rotate", "endpoint", "leave"} {
			if l := p.MeshdByKind[k]; len(l) > 0 {
				kinds = append(kinds, fmt.Sprintf("%s %s (floor %s)", k, ms(Quantile(l, 0.5)), ms(Quantile(p.FloorByKind[k], 0.5))))
			}
		}
		if len(kinds) > 0 {
			fmt.Fprintf(w, "\nmeshd p50 by event, ms: %s.", strings.Join(kinds, ", "))
		}
		if l := p.Hints; len(l) > 0 {
			fmt.Fprintf(w, "\nHint key, from the write's acknowledgement until every meshd host's agent has it: p50 %s, p99 %s ms (%d events).", ms(Quantile(l, 0.5)), ms(Quantile(l, 0.99)), len(l))
		}
		m50 := Quantile(p.Latency[Meshd], 0.5)
		fmt.Fprintf(w, "\nmeshd/classic p50: %s; meshd/floor p50: %s. ", ratio(m50, Quantile(p.Latency[Classic], 0.5)), ratio(m50, Quantile(p.Latency[Floor], 0.5)))
		fmt.Fprintf(w, "meshd CPU per event: %s ms; its Consul agent's: %s ms; host (meshd + agent): %s ms; host per change, minus an idle window as long: %s ms (events over %s, idle %s: %s ms a minute); one read of the whole list: %s ms; meshd peak RSS: %.1f MB. ",
			ms(p.CPUPerEvent), ms(p.AgentCPUPerEvent), ms(p.HostCPUPerEvent), ms(p.HostCPUPerChange),
			p.EventsWindow.Round(time.Second), p.IdleWindow.Round(time.Second), ms(p.HostIdlePerMinute), ms(p.FullReadCPU), float64(p.PeakRSS)/(1<<20))
		if len(p.CostRounds) > 0 {
			fmt.Fprintf(w, "Host per change over %d more pairs of windows (changes and idle, in turn), median: %s ms (rounds: %s; idle a minute: %s ms). ",
				len(p.CostRounds), ms(median(p.CostRounds)), msList(p.CostRounds), msList(p.IdleRounds))
		}
		var rx []string
		for _, h := range slices.Sorted(mapKeys(p.RxPerEvent)) {
			rx = append(rx, fmt.Sprintf("%s %.0f", h, p.RxPerEvent[h]))
		}
		fmt.Fprintf(w, "Bytes received per event per host: %s. ", strings.Join(rx, ", "))
		if p.InitialFloor > 0 {
			fmt.Fprintf(w, "Initial sync of a fresh meshd host: %s ms; its floor %s ms (a fresh agent's first list read %s ms + one bare ConfigureDevice of the same peers %s ms): x%.2f; a second list read through the host's warm agent: %s ms. ",
				ms(p.InitialSync), ms(p.InitialFloor), ms(p.FloorListRead), ms(p.FloorConfigure), float64(p.InitialSync)/float64(p.InitialFloor), ms(p.WarmListRead))
		} else {
			fmt.Fprintf(w, "Initial sync of a fresh meshd host: %s ms. ", ms(p.InitialSync))
		}
		fmt.Fprintf(w, "Resolution: a datagram every %s, a route looked up every %s ms (median).\n\n", probeInterval, ms(p.RoutePeriod))
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// PerChange is the host's CPU per change: the median over the rounds when
// -cost-rounds measured them, else the one pair of windows after the
// events.
func (p Point) PerChange() time.Duration {
	if len(p.CostRounds) > 0 {
		return median(p.CostRounds)
	}
	return p.HostCPUPerChange
}

func median(l []time.Duration) time.Duration {
	s := slices.Sorted(slices.Values(l))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func msList(l []time.Duration) string {
	out := make([]string, len(l))
	for i, d := range l {
		out[i] = ms(d)
	}
	return strings.Join(out, ", ")
}
