import { sessionRoute } from '@/lib/next/session-route';

export const runtime = 'nodejs';
export const dynamic = 'force-dynamic';
export { sessionRoute as GET };
