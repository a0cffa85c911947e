package bench

import (
	"fmt"
	"image/color"
	"math"
	"slices"
	"strconv"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// PlotCDF draws the latency CDF of each system at one point as a PNG.
func PlotCDF(path string, p Point) error {
	pl := plot.New()
	pl.Title.Text = fmt.Sprintf("Convergence after a catalog write, N = %d", p.N)
	pl.X.Label.Text = "milliseconds from the write's acknowledgement (log scale)"
	pl.Y.Label.Text = "fraction of events"
	pl.X.Scale = plot.LogScale{}
	pl.X.Tick.Marker = logTicks{}
	pl.Legend.Top = false
	pl.Legend.Left = false
	colors := map[string]color.RGBA{Floor: {120, 120, 120, 255}, Meshd: {0, 110, 200, 255}, Classic: {210, 80, 30, 255}}
	for _, sys := range []string{Floor, Meshd, Classic} {
		l := slices.Clone(p.Latency[sys])
		if len(l) == 0 {
			continue
		}
		slices.Sort(l)
		pts := make(plotter.XYs, 0, 2*len(l))
		for i, d := range l {
			x := max(float64(d)/float64(time.Millisecond), 0.01)
			pts = append(pts, plotter.XY{X: x, Y: float64(i) / float64(len(l))}, plotter.XY{X: x, Y: float64(i+1) / float64(len(l))})
		}
		line, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		line.Color = colors[sys]
		line.Width = vg.Points(2)
		pl.Add(line)
		pl.Legend.Add(sys, line)
	}
	return pl.Save(8*vg.Inch, 5*vg.Inch, path)
}

// logTicks labels 1, 2 and 5 times each power of ten in range: a log
// scale's own ticks label only powers of ten, and the default ticks bunch
// at the right of a log axis.
type logTicks struct{}

func (logTicks) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for p := math.Pow(10, math.Floor(math.Log10(lo))); p <= hi; p *= 10 {
		for _, m := range []float64{1, 2, 5} {
			if v := m * p; v >= lo && v <= hi {
				ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
			}
		}
	}
	return ticks
}
