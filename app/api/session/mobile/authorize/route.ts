import { mobileAuthorizeRoute } from '@/lib/next/api-routes';

export const runtime = 'nodejs';
export const dynamic = 'force-dynamic';
export { mobileAuthorizeRoute as GET };
