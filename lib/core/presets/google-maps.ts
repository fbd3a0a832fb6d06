import { z } from 'zod';
import type { TypedRoute } from '../config/load';
import { commonPresetOptions, definePreset, presetFunction, type RouteInput } from './preset';

/**
 * Google Maps Platform web services (https://developers.google.com/maps/documentation/geocoding/requests-geocoding
 * and siblings): the key travels as the `key` query parameter, added by Keyward (a client's own `key` is
 * refused in any spelling). Every call is billed, so the preset rate-limits each user by default.
 */

const options = z.strictObject({
  ...commonPresetOptions,
  perUserPerMinute: z
    .number()
    .int()
    .min(1)
    .max(100_000)
    .default(60)
    .describe('Calls per user per minute across the preset\'s routes (default 60); set "rateLimits" to replace it.'),
});

const text = (max: number) => z.string().min(1).max(max).optional();
const common = { language: text(16), region: text(8) };

export const geocodeQuery = z.object({
  ...common,
  address: text(512),
  latlng: text(64),
  place_id: text(512),
  components: text(512),
  bounds: text(128),
  result_type: text(256),
  location_type: text(128),
});
export const directionsQuery = z.object({
  ...common,
  origin: z.string().min(1).max(512),
  destination: z.string().min(1).max(512),
  mode: z.enum(['driving', 'walking', 'bicycling', 'transit']).optional(),
  waypoints: text(2048),
  alternatives: z.enum(['true', 'false']).optional(),
  avoid: text(64),
  units: z.enum(['metric', 'imperial']).optional(),
  departure_time: text(16),
  arrival_time: text(16),
});
export const distanceMatrixQuery = z.object({
  ...common,
  origins: z.string().min(1).max(2048),
  destinations: z.string().min(1).max(2048),
  mode: z.enum(['driving', 'walking', 'bicycling', 'transit']).optional(),
  avoid: text(64),
  units: z.enum(['metric', 'imperial']).optional(),
  departure_time: text(16),
});
export const timezoneQuery = z.object({ location: z.string().min(1).max(64), timestamp: z.string().regex(/^\d{1,12}$/), language: text(16) });
export const elevationQuery = z.object({ locations: text(2048), path: text(2048), samples: text(4) });
export const staticMapQuery = z.object({
  ...common,
  center: text(256),
  zoom: text(2),
  size: z.string().regex(/^\d{1,4}x\d{1,4}$/),
  scale: z.enum(['1', '2']).optional(),
  format: z.enum(['png', 'png8', 'png32', 'gif', 'jpg', 'jpg-baseline']).optional(),
  maptype: z.enum(['roadmap', 'satellite', 'terrain', 'hybrid']).optional(),
  markers: text(2048),
  path: text(2048),
});

const ROUTES: RouteInput[] = [
  { method: 'GET', path: '/geocode/json', query: geocodeQuery },
  { method: 'GET', path: '/directions/json', query: directionsQuery },
  { method: 'GET', path: '/distancematrix/json', query: distanceMatrixQuery },
  { method: 'GET', path: '/timezone/json', query: timezoneQuery },
  { method: 'GET', path: '/elevation/json', query: elevationQuery },
  // An image: fetched like any call (an <img> cannot send the CSRF header), shown through a blob: URL.
  { method: 'GET', path: '/staticmap', query: staticMapQuery, cacheControl: 'private, max-age=3600' },
];

export const googleMapsPreset = definePreset({
  name: 'google-maps',
  options,
  build: (o) => ({
    baseUrl: 'https://maps.googleapis.com/maps/api/',
    auth: { type: 'query', name: 'key', secret: o.secret ?? { env: 'GOOGLE_MAPS_API_KEY' } },
    routes: ROUTES,
    rateLimits: [{ by: 'user', limit: o.perUserPerMinute, windowSeconds: 60 }],
  }),
});

/** The routes as the typed client sees them: each query from its contract. */
export type GoogleMapsRoutes = readonly [
  TypedRoute<'GET', '/geocode/json', never, z.input<typeof geocodeQuery>>,
  TypedRoute<'GET', '/directions/json', never, z.input<typeof directionsQuery>>,
  TypedRoute<'GET', '/distancematrix/json', never, z.input<typeof distanceMatrixQuery>>,
  TypedRoute<'GET', '/timezone/json', never, z.input<typeof timezoneQuery>>,
  TypedRoute<'GET', '/elevation/json', never, z.input<typeof elevationQuery>>,
  TypedRoute<'GET', '/staticmap', never, z.input<typeof staticMapQuery>>,
];

/** `googleMaps({ only: ['GET /geocode/json'] })`. */
export const googleMaps = presetFunction<typeof options, GoogleMapsRoutes, 'google-maps'>(googleMapsPreset);
