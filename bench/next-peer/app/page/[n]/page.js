// The Next.js peer of the benchmark: an App Router page with ISR (revalidate = 60)
// rendering about 16 KiB of deterministic HTML, generated on first request.
export const revalidate = 60;
export const dynamicParams = true;

export async function generateStaticParams() {
  return [];
}

const WORDS = ["static", "regeneration", "cache", "origin", "page", "fresh", "stale", "tag",
  "server", "visitor", "content", "writer", "latency", "edge", "render", "request"];

function text(n) {
  let x = BigInt(n) * 0x9E3779B97F4A7C15n | 1n;
  const mask = (1n << 64n) - 1n;
  const out = [];
  let len = 0;
  while (len < 5600) {
    x ^= (x << 13n) & mask;
    x ^= x >> 7n;
    x ^= (x << 17n) & mask;
    const w = WORDS[Number(x % 16n)];
    out.push(w);
    len += w.length + 1;
  }
  return out.join(" ");
}

export default async function Page({ params }) {
  const { n } = await params;
  return (
    <main>
      <h1>Page {n}</h1>
      <p>{text(Number(n) || 0)}</p>
    </main>
  );
}
