/** Lets tests wait for a condition on a fake, re-checked whenever the fake notes an event (and every 50 ms). */
export class EventWaiters {
  private readonly waiting: (() => void)[] = [];

  constructor(private readonly name: string) {}

  notify(): void {
    for (const wake of this.waiting.splice(0)) wake();
  }

  async until(predicate: () => boolean, what: string, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate()) {
      if (Date.now() > deadline) throw new Error(`${this.name}: timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 50);
        this.waiting.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }
}
